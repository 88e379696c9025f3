"""Batches for Keras straight from the uint8 patch array (a memory map): no float copy of the data.

A batch is one gather of rows; augmentation happens on the device, in the model's input layers
(``histo_exp.model.augment``), so the loader does no per-image Python work.
"""

from __future__ import annotations

import math
import mmap

import keras
import numpy as np


ONE_HOT = np.eye(2, dtype="float32")


def release_pages(images: np.ndarray) -> None:
    """Drop the pages of a memory map from this process (they stay in the OS page cache).

    Random reads fault in whole neighbourhoods of pages, so without this the resident size grows
    to the whole cache file within an epoch. Measured cost: about 0.2 ms per call.
    """
    mm = getattr(images, "_mmap", None)
    if isinstance(mm, mmap.mmap) and hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_DONTNEED)


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
        self.labels = labels
        self.indices = np.asarray(indices)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self._epoch = 0
        self._order = self._epoch_order()

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self._order[i * self.batch_size : (i + 1) * self.batch_size]
        if self.shuffle:
            idx = np.sort(idx)  # sequential reads; the batch's own order does not matter
        x = self.images[idx]
        release_pages(self.images)
        return x, ONE_HOT[self.labels[idx]]

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
