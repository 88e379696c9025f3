"""Decode patches in parallel (OpenCV releases the GIL) into one uint8 array."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

from histo_exp.data.pages import release_pages
from histo_exp.data.index import Manifest

SMALL_PATCH_POLICIES = ("pad", "resize", "drop")
SLICE = 1024  # patches per task: progress moves often, and a thread never waits long for another
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


# OpenCV >= 4.10 decodes straight to RGB: one pass fewer over the pixels than BGR then a swap.
RGB_READ = getattr(cv2, "IMREAD_COLOR_RGB", None)


def _read(path: str, color: str) -> np.ndarray | None:
    if color == "gray":
        img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        return None if img is None else img[..., None]
    if RGB_READ is not None:
        return cv2.imread(path, RGB_READ)
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode(
    manifest: Manifest,
    image_size: int,
    color: str = "rgb",
    small_patches: str = "pad",
    workers: int | None = None,
    progress: bool = True,
    out: np.ndarray | None = None,
) -> Decoded:
    """Decode every manifest entry; unreadable files and dropped patches are skipped, not fatal.

    Rows stay aligned with the manifest (a skipped row is zeros, ``keep`` false). They go into
    ``out`` when given (the cache's memory-mapped file while it is built: the threads write in
    parallel, with no copy and no serial write after them), else into a new array. ``workers``
    defaults to the number of cores (more threads only contend for them).
    """
    if color not in COLORS:
        raise ValueError(f"data.color must be one of {sorted(COLORS)}; got {color!r}")
    if small_patches not in SMALL_PATCH_POLICIES:
        raise ValueError(f"data.small_patches must be one of {SMALL_PATCH_POLICIES}; got {small_patches!r}")
    n = len(manifest)
    shape = (n, image_size, image_size, COLORS[color])
    if out is not None and out.shape != shape:
        raise ValueError(f"out has shape {out.shape}; decoding needs {shape}")
    images = np.zeros(shape, dtype=np.uint8) if out is None else out
    keep = np.zeros(n, dtype=bool)
    skipped: dict[str, str] = {}
    root = str(manifest.root) + os.sep
    paths = manifest.paths
    full = (image_size, image_size)

    def work(lo: int, hi: int) -> Counter:
        fitted: Counter = Counter()
        for i in range(lo, hi):
            img = _read(root + paths[i], color)
            if img is None:
                skipped[paths[i]] = "unreadable"
                continue
            if img.shape[:2] == full:  # nearly every patch: no call, nothing to count
                images[i] = img
                continue
            patch, done = fit_patch(img, image_size, small_patches)
            if patch is None:
                skipped[paths[i]] = f"smaller than {image_size}px (data.small_patches=drop)"
                continue
            fitted[done] += 1
            images[i] = patch
        keep[lo:hi] = [paths[i] not in skipped for i in range(lo, hi)]
        release_pages(images)  # written pages stay in the page cache, not in this process
        return fitted

    # Contiguous slices: one task per image would cost more than decoding it.
    workers = max(1, workers or os.cpu_count() or 1)
    bounds = np.unique(np.r_[np.arange(0, n, SLICE), n])
    fitted: Counter = Counter()
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
        total=n, desc="decode", unit="patch", disable=not progress, mininterval=0.5
    ) as bar:
        for lo, hi, counts in zip(bounds[:-1], bounds[1:], pool.map(work, bounds[:-1], bounds[1:])):
            fitted += counts
            bar.update(hi - lo)
    return Decoded(images, keep, skipped, padded=fitted["padded"], resized=fitted["resized"])
