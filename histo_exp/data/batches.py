"""Batches for Keras straight from the uint8 patch array: no float copy of the dataset."""

from __future__ import annotations

import math

import keras
import numpy as np


def dihedral(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips and 90-degree rotations per image (histology has no orientation)."""
    out = images.copy()
    k = rng.integers(0, 4, len(images))
    flip = rng.random(len(images)) < 0.5
    for i in range(len(images)):
        img = np.rot90(images[i], k[i])
        out[i] = img[:, ::-1] if flip[i] else img
    return out


class PatchBatches(keras.utils.PyDataset):
    """Yields ``(uint8 images, one-hot float32 labels)``; shuffles per epoch when training."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.images = images
        self.labels = labels
        self.indices = np.asarray(indices)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.augment = augment
        self._rng = np.random.default_rng(seed)
        self._order = self.indices.copy()
        if shuffle:
            self._rng.shuffle(self._order)

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self._order[i * self.batch_size : (i + 1) * self.batch_size]
        if self.shuffle:
            idx = np.sort(idx)  # sequential reads; the batch's own order does not matter
        x = self.images[idx]
        if self.augment:
            x = dihedral(x, self._rng)
        y = np.eye(2, dtype="float32")[self.labels[idx]]
        return x, y

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self._rng.shuffle(self._order)

    @property
    def targets(self) -> np.ndarray:
        """Labels in the order batches yield them when not shuffled (for evaluation)."""
        return self.labels[self.indices]
