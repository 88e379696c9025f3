"""Decode patches in parallel (OpenCV releases the GIL) into one uint8 array."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

from histo_exp.data.index import Manifest

SMALL_PATCH_POLICIES = ("pad", "resize", "drop")
COLORS = {"rgb": 3, "gray": 1}


@dataclass
class Decoded:
    """Images of the manifest entries that decoded, and why the others did not."""

    images: np.ndarray  # (n, size, size, channels) uint8, one row per entry; zeros where skipped
    keep: np.ndarray  # bool per manifest entry
    skipped: dict[str, str]  # relative path -> reason
    padded: int = 0
    resized: int = 0


def fit_patch(img: np.ndarray, size: int, small: str) -> tuple[np.ndarray | None, str]:
    """Bring one decoded patch to ``size`` x ``size``; returns the patch and what was done."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img, ""
    if h > size or w > size or small == "resize":
        out = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        return out.reshape(size, size, -1), "resized"
    if small == "drop":
        return None, "dropped"
    # Slide-edge patches are cut by the slide border: fill the rest with glass (white).
    pad = ((0, size - h), (0, size - w)) + ((0, 0),) * (img.ndim - 2)
    return np.pad(img, pad, constant_values=255), "padded"


def _read(path: str, color: str) -> np.ndarray | None:
    if color == "gray":
        img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        return None if img is None else img[..., None]
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode(
    manifest: Manifest,
    image_size: int,
    color: str = "rgb",
    small_patches: str = "pad",
    workers: int = 8,
    progress: bool = True,
) -> Decoded:
    """Decode every manifest entry; unreadable files and dropped patches are skipped, not fatal.

    Rows stay aligned with the manifest (a skipped row is zeros, ``keep`` false).
    """
    if color not in COLORS:
        raise ValueError(f"data.color must be one of {sorted(COLORS)}; got {color!r}")
    if small_patches not in SMALL_PATCH_POLICIES:
        raise ValueError(f"data.small_patches must be one of {SMALL_PATCH_POLICIES}; got {small_patches!r}")
    n = len(manifest)
    images = np.zeros((n, image_size, image_size, COLORS[color]), dtype=np.uint8)
    keep = np.zeros(n, dtype=bool)
    skipped: dict[str, str] = {}
    fitted = np.full(n, "", dtype=object)

    root = str(manifest.root) + os.sep

    def work(lo: int, hi: int) -> int:
        for i in range(lo, hi):
            rel = manifest.paths[i]
            img = _read(root + rel, color)
            if img is None:
                skipped[rel] = "unreadable"
                continue
            out, done = fit_patch(img, image_size, small_patches)
            if out is None:
                skipped[rel] = f"smaller than {image_size}px (data.small_patches=drop)"
                continue
            fitted[i] = done
            images[i] = out
            keep[i] = True
        return hi - lo

    # A few contiguous slices per thread: one task per image would cost more than decoding it.
    workers = max(1, workers)
    bounds = np.linspace(0, n, min(n, workers * 4) + 1).astype(int)
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
        total=n, desc="decode", unit="patch", disable=not progress, mininterval=0.5
    ) as bar:
        for count in pool.map(work, bounds[:-1], bounds[1:]):
            bar.update(count)
    return Decoded(
        images, keep, skipped,
        padded=int((fitted == "padded").sum()), resized=int((fitted == "resized").sum()),
    )
