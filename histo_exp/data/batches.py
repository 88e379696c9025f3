"""Batches for Keras straight from the uint8 patch cache: no float copy of the data.

A batch is one gather of rows: positional reads from the cache file, or one fancy index of an
array in memory or on the device. Augmentation happens on the device, in the model's input layers
(``histo_exp.model.augment``), so the loader touches no pixel in Python.
"""

from __future__ import annotations

import math
import mmap
import os

import keras
import numpy as np


def release_pages(images: np.ndarray) -> None:
    """Drop the pages of a memory map from this process (they stay in the OS page cache).

    Random reads fault in whole neighbourhoods of pages, so without this the resident size grows
    to the whole cache file within an epoch. Measured cost: about 0.2 ms per call.
    """
    mm = getattr(images, "_mmap", None)
    if isinstance(mm, mmap.mmap) and hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_DONTNEED)


class FileRows:
    """Gathers rows of a memory-mapped ``.npy`` cache by positional reads from its file (``os.preadv``).

    A gather through the memory map faults in every page it touches, and dropping those pages
    again (``release_pages``, to keep the resident size flat) makes the next batch fault afresh:
    76,603 images/s from one thread on the full cache (``make bench``). A read copies from the page
    cache with no mapping at all, 2.4 times as fast on the same host, with nothing resident but
    the batch. One read per row: a system call, no pixel work in Python.
    """

    def __init__(self, images: np.memmap) -> None:
        self.file = open(images.filename, "rb", buffering=0)  # noqa: SIM115 - lives as long as the batches
        self.offset = int(images.offset)
        self.row_shape, self.dtype = images.shape[1:], images.dtype
        self.row_bytes = int(np.prod(self.row_shape)) * images.dtype.itemsize

    @staticmethod
    def fits(images: np.ndarray) -> bool:
        """True for the whole C-ordered memory map ``np.load`` returns (not a view of one), where reads work."""
        return (hasattr(os, "preadv") and isinstance(images, np.memmap) and isinstance(images.base, mmap.mmap)
                and images.flags.c_contiguous and bool(images.filename))

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        fd = self.file.fileno()
        for row, position in zip(out, (self.offset + np.asarray(rows, np.int64) * self.row_bytes).tolist(), strict=True):
            if os.preadv(fd, [row], position) != self.row_bytes:
                raise OSError(f"{self.file.name} ends before row {(position - self.offset) // self.row_bytes}: "
                              "the cache file was cut short; delete its folder to rebuild it")
        return out


class PatchBatches(keras.utils.PyDataset):
    """Yields ``(uint8 images, one-hot float32 labels)``; shuffles per epoch when training.

    ``images`` is the cache's memory map, or the same array in device memory (``on_device``):
    a batch is one gather from either.

    The order of epoch ``e`` comes from ``(seed, e)`` alone, so batch ``i`` is the same whichever
    thread or order Keras asks for batches in.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        workers: int = 1,
    ) -> None:
        # workers > 1: threads gather batches ahead of the model (a fast device outruns one thread).
        super().__init__(workers=int(workers), use_multiprocessing=False)
        self.images = images
        self._rows = FileRows(images) if FileRows.fits(images) else None  # else: memory or device
        self.labels = labels
        self.indices = np.asarray(indices)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self._epoch = 0
        self._order = self._epoch_order()
        # One-hot targets for the softmax head: as many columns as classes (two at least: a binary model's).
        self.one_hot = np.eye(max(2, int(np.max(labels, initial=0)) + 1), dtype="float32")

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self._order[i * self.batch_size : (i + 1) * self.batch_size]
        if self.shuffle:
            idx = np.sort(idx)  # sequential reads; the batch's own order does not matter
        if self._rows is not None:
            x = self._rows[idx]
        else:
            x = self.images[idx]
            release_pages(self.images)
        return x, self.one_hot[self.labels[idx]]

    def _epoch_order(self) -> np.ndarray:
        if not self.shuffle:
            return self.indices
        return np.random.default_rng([self.seed, self._epoch]).permutation(self.indices)

    def on_epoch_end(self) -> None:
        self._epoch += 1
        self._order = self._epoch_order()

    @property
    def targets(self) -> np.ndarray:
        """Labels in the order batches yield them when not shuffled (for evaluation)."""
        return self.labels[self.indices]


def split_batches(data, part: str, batch_size: int, seed: int = 0, workers: int = 1) -> PatchBatches:
    """Batches of one part of a ``PatchData`` split; only training shuffles."""
    return PatchBatches(data.images, data.labels, getattr(data.split, part), batch_size,
                        shuffle=part == "train", seed=seed, workers=workers)
