"""Batches for Keras straight from the uint8 patch array (a memory map): no float copy of the data."""

from __future__ import annotations

import math
import mmap
from collections.abc import Mapping
from dataclasses import dataclass

import keras
import numpy as np


@dataclass(frozen=True)
class Augment:
    """Random training-time changes; labels never change (histology has no orientation)."""

    flip: bool = True
    rotate90: bool = True
    color_jitter: float = 0.0

    @classmethod
    def from_config(cls, cfg: Mapping | bool | None) -> "Augment | None":
        """``data.augment``: a mapping of the fields, or false/null for none."""
        if not cfg:
            return None
        return cls(**dict(cfg)) if isinstance(cfg, Mapping) else cls()

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = len(images)
        out = images.copy()
        k = rng.integers(0, 4, n) if self.rotate90 else np.zeros(n, int)
        flip = rng.random(n) < 0.5 if self.flip else np.zeros(n, bool)
        for i in np.flatnonzero((k > 0) | flip):
            img = np.rot90(images[i], k[i])
            out[i] = img[:, ::-1] if flip[i] else img
        if self.color_jitter:
            a, c = self.color_jitter, images.shape[-1]
            scale = rng.uniform(1 - a, 1 + a, (n, 1, 1, c)).astype(np.float32)
            shift = rng.uniform(-a, a, (n, 1, 1, c)).astype(np.float32) * 255
            out = np.clip(out * scale + shift, 0, 255).astype(np.uint8)
        return out


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

    The order and the augmentation of batch ``i`` in epoch ``e`` come from ``(seed, e, i)``
    alone, so they are the same whichever thread or order Keras asks for batches in.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: Augment | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.images = images
        self.labels = labels
        self.indices = np.asarray(indices)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.augment = augment
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
        if self.augment:
            x = self.augment(x, np.random.default_rng([self.seed, self._epoch, i]))
        return x, np.eye(2, dtype="float32")[self.labels[idx]]

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


def split_batches(data, part: str, batch_size: int, seed: int = 0,
                  augment: Augment | None = None) -> PatchBatches:
    """Batches of one part of a ``PatchData`` split; only training shuffles and augments."""
    train = part == "train"
    return PatchBatches(data.images, data.labels, getattr(data.split, part), batch_size,
                        shuffle=train, augment=augment if train else None, seed=seed)
