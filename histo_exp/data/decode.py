"""Decode patches in parallel (OpenCV releases the GIL) into one uint8 array."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as Pending
from dataclasses import dataclass, field

import cv2
import numpy as np
from tqdm import tqdm

from histo_exp import signals
from histo_exp.data.index import Manifest
from histo_exp.errors import UsageError

SMALL_PATCH_POLICIES = ("pad", "resize", "drop")
SLICE = 1024  # patches per task: progress moves often, and a thread never waits long for another
COLORS = {"rgb": 3, "gray": 1}
POLL_S = 0.5  # the longest a stop whose raise was lost waits for the decode loop to see it


@dataclass
class Decoded:
    """Images of the manifest entries that decoded, and why the others did not."""

    images: np.ndarray | None  # (n, size, size, channels) uint8, one row per entry; zeros where skipped
    # (None when the rows were handed to a writer)
    usable: np.ndarray  # bool per manifest entry: decoded, not skipped
    skipped: dict[str, str]  # relative path -> reason
    padded: int = 0
    resized: int = 0
    sizes: Counter = field(default_factory=Counter)  # (height, width) of the padded patches

    def mostly_padding(self, image_size: int) -> tuple[int, tuple[int, int] | None]:
        """How many padded patches fill under half of the ``image_size`` square, and the most common
        (height, width) among them (None when there are none)."""
        small = {hw: n for hw, n in self.sizes.items() if 2 * hw[0] * hw[1] < image_size * image_size}
        if not small:
            return 0, None
        return sum(small.values()), max(small, key=small.__getitem__)


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
# (Its imread into a given array is not used: a file it cannot read leaves the array as it was,
# with nothing to tell that from a decoded patch.)
RGB_READ = getattr(cv2, "IMREAD_COLOR_RGB", None)


def _read(path: str, color: str) -> np.ndarray | None:
    if color == "gray":
        img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        return None if img is None else img[..., None]
    if RGB_READ is not None:
        return cv2.imread(path, RGB_READ)
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def check_choices(color: str, small_patches: str) -> None:
    """The colour and the small-patch policy must be ones ``decode`` knows."""
    if color not in COLORS:
        raise UsageError(f"data.color must be one of {sorted(COLORS)}; got {color!r}")
    if small_patches not in SMALL_PATCH_POLICIES:
        raise UsageError(f"data.small_patches must be one of {SMALL_PATCH_POLICIES}; got {small_patches!r}")


def decode(
    manifest: Manifest,
    image_size: int,
    color: str = "rgb",
    small_patches: str = "pad",
    workers: int | None = None,
    progress: bool = True,
    write: Callable[[int, np.ndarray], None] | None = None,
) -> Decoded:
    """Decode every manifest entry; unreadable files and dropped patches are skipped, not fatal.

    Rows stay aligned with the manifest (a skipped row is zeros, ``usable`` false). With ``write``,
    each thread hands its slice to ``write(first_row, rows)`` (the cache writes it to its file,
    in parallel and outside the GIL) and ``Decoded.images`` is None; else the rows are gathered
    into a new array. ``workers`` defaults to the number of cores (more only contend for them).
    A stop (``histo_exp.signals``) ends it within a slice, and no thread writes after it returns.
    """
    check_choices(color, small_patches)
    n = len(manifest)
    row_shape = (image_size, image_size, COLORS[color])
    images = np.zeros((n, *row_shape), dtype=np.uint8) if write is None else None
    usable = np.zeros(n, dtype=bool)
    skipped: dict[str, str] = {}
    root = str(manifest.root) + os.sep
    paths = manifest.paths
    full = (image_size, image_size)
    local = threading.local()  # one slice buffer per thread, reused

    def work(lo: int, hi: int) -> tuple[Counter, Counter]:
        signals.check()  # a stop: the slices not yet started end at once
        if images is not None:
            rows = images[lo:hi]
        else:
            if not hasattr(local, "rows"):
                local.rows = np.empty((SLICE, *row_shape), dtype=np.uint8)
            rows = local.rows[: hi - lo]
        fitted: Counter = Counter()
        sizes: Counter = Counter()
        for j, i in enumerate(range(lo, hi)):
            img = _read(os.path.join(root, paths[i]), color)  # an absolute path (a manifest's) stays whole
            if img is not None and img.shape[:2] == full:  # nearly every patch: nothing to count
                rows[j] = img
                continue
            patch, done = fit_patch(img, image_size, small_patches) if img is not None else (None, "unreadable")
            if patch is None:
                rows[j] = 0
                skipped[paths[i]] = "unreadable" if img is None else \
                    f"smaller than {image_size}px (data.small_patches=drop)"
                continue
            fitted[done] += 1
            if done == "padded":
                sizes[img.shape[:2]] += 1
            rows[j] = patch
        usable[lo:hi] = [paths[i] not in skipped for i in range(lo, hi)]
        if write is not None:
            write(lo, rows)
        return fitted, sizes

    # Contiguous slices: one task per image would cost more than decoding it.
    workers = max(1, workers or os.cpu_count() or 1)
    fitted, sizes = _run_slices(work, n, workers, progress)
    return Decoded(images, usable, skipped, padded=fitted["padded"], resized=fitted["resized"], sizes=sizes)


def _run_slices(work: Callable[[int, int], tuple[Counter, Counter]], n: int, workers: int,
                progress: bool) -> tuple[Counter, Counter]:
    """Run ``work`` on every slice of ``n`` rows in ``workers`` threads; the sums of what it returns.

    On a stop or an error the slices not started are cancelled and the running ones waited for
    (one slice each): the caller may then close the file they write to.
    """
    bounds = np.unique(np.r_[np.arange(0, n, SLICE), n]).tolist()
    fitted: Counter = Counter()
    sizes: Counter = Counter()
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
        total=n, desc="decode", unit="patch", disable=not progress, mininterval=0.5
    ) as bar:
        try:
            tasks = [pool.submit(work, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
            for task, size in zip(tasks, np.diff(bounds).tolist(), strict=True):
                counts, shapes = _wait(task)
                fitted += counts
                sizes += shapes
                bar.update(size)
                signals.check()  # a stop in the last slice: no slice is left to start and see it
        except BaseException:
            with signals.deferred():  # a stop now must not cut the wait short
                pool.shutdown(wait=True, cancel_futures=True)
            raise
    return fitted, sizes


def _wait(task: Future) -> tuple[Counter, Counter]:
    """The task's result; meanwhile a safe point for a stop every ``POLL_S`` (its own raise may be lost)."""
    while True:
        signals.check()
        try:
            return task.result(timeout=POLL_S)
        except Pending:
            continue
