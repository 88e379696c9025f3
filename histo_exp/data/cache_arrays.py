"""Filling the cache from arrays rather than image files (PCam's HDF5: ``Manifest.pixels``).

Nothing is decoded: each chunk of rows is brought to the cache's size and colour by decode's rule and
written while the next is read in a thread (``_read_ahead``). Where the source files store the rows as
the cache keeps them (uint8 RGB at its size, one contiguous run: ``pixels``' ``extents``), they are
copied as ``cp`` copies, in the kernel (``os.copy_file_range``) where it can. No row is skipped but by
data.small_patches=drop. ``Target``, the images file being written, serves the decoding path too; it
hashes each row the decoding threads write (``hash_rows``: the dataset card's duplicate check); the rows
of arrays are hashed from the file once it is written (``hash_file``: some never pass through Python).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from histo_exp import signals
from histo_exp.data.index import DatasetError, Manifest

if TYPE_CHECKING:
    from histo_exp.data.cache import CacheKey
    from histo_exp.data.decode import Decoded

KERNEL_PIECE = 64 * 2**20  # bytes per copy_file_range call: a stop is seen between two
# What a kernel or file system that cannot copy between two files in the kernel says: read and written instead.
NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM,
                  errno.EBADF}


HASH_SLICE = 4096  # rows per task of ``hash_file``


def hash_rows(rows: np.ndarray) -> np.ndarray:
    """A uint64 per row: the first 8 bytes of the BLAKE2b digest of its pixels (C order), read little-endian.

    Identical pixels give identical hashes whatever wrote them (decoded files or copied arrays); about 6 ms
    per 1,000 rows of 50x50x3 on one core, in threads that run at once (hashlib releases the GIL)."""
    rows = np.ascontiguousarray(rows)
    digests = b"".join(hashlib.blake2b(row, digest_size=8).digest() for row in rows)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def hash_file(images: np.ndarray, workers: int | None = None) -> np.ndarray:
    """``hash_rows`` of every row of ``images`` (the cache file's memory map), in threads over slices; a stop
    ends it within a slice (the slices not started are cancelled)."""
    from concurrent.futures import ThreadPoolExecutor

    on_disk = isinstance(images, np.memmap) and bool(images.filename)
    # Read from the file, not through the memory map: its pages would count in the process's peak RSS
    # (the whole cache, 9 GB for PCam), where a read's buffer is freed with its slice.
    fd = os.open(images.filename, os.O_RDONLY) if on_disk else -1
    row_bytes = int(np.prod(images.shape[1:])) * images.dtype.itemsize

    def work(lo: int) -> np.ndarray:
        signals.check()
        hi = min(lo + HASH_SLICE, len(images))
        if not on_disk:
            return hash_rows(images[lo:hi])
        data = os.pread(fd, (hi - lo) * row_bytes, images.offset + lo * row_bytes)
        return hash_rows(np.frombuffer(data, images.dtype).reshape((hi - lo, *images.shape[1:])))

    pool = ThreadPoolExecutor(max_workers=max(1, workers or os.cpu_count() or 1))
    try:
        tasks = [pool.submit(work, lo) for lo in range(0, len(images), HASH_SLICE)]
        parts = [task.result() for task in tasks]
    finally:
        with signals.deferred():  # the running slices end; a stop now must not cut the wait short
            pool.shutdown(wait=True, cancel_futures=True)
        if on_disk:
            os.close(fd)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


@dataclass(frozen=True)
class Target:
    """The images file being built: rows are written at ``offset + row * row_bytes``, and their hashes
    (``hash_rows``) put in ``hashes`` where it is given."""

    fd: int
    offset: int
    row_bytes: int
    hashes: np.ndarray | None = None

    def write(self, first: int, rows: np.ndarray) -> None:  # from the decoding threads: pwrite releases the GIL
        rows = np.ascontiguousarray(rows)
        if self.hashes is not None:  # each thread its own rows: no lock
            self.hashes[first:first + len(rows)] = hash_rows(rows)
        self.write_bytes(memoryview(rows).cast("B"), self.offset + first * self.row_bytes)

    def write_bytes(self, data, at: int) -> None:
        data = memoryview(data)
        while data:
            done = os.pwrite(self.fd, data, at)
            data, at = data[done:], at + done


def _fit(images: np.ndarray, key: CacheKey) -> tuple[np.ndarray | None, str]:
    """A chunk of same-size RGB patches brought to the key's colour and size, by decode's rule
    (``fit_patch``); None when the rule drops them."""
    import cv2

    from histo_exp.data.decode import fit_patch

    k, h, w = images.shape[:3]
    if key.color == "gray":  # the chunk as one tall image: one call, not one per patch
        images = cv2.cvtColor(images.reshape(k * h, w, 3), cv2.COLOR_RGB2GRAY).reshape(k, h, w, 1)
    size = key.image_size
    if (h, w) == (size, size) or k == 0:
        return images, ""
    first, done = fit_patch(images[0], size, key.small_patches)
    if first is None:
        return None, done
    out = np.empty((k, size, size, images.shape[3]), dtype=np.uint8)
    out[0] = first
    for i in range(1, k):
        out[i] = fit_patch(images[i], size, key.small_patches)[0]
    return out, done


def _write_rows(write: Callable[[int, np.ndarray], None], rows: np.ndarray, images: np.ndarray) -> None:
    """Rows in a run (every chunk PCam gives) in one write, any others one by one."""
    if rows.size and rows[-1] - rows[0] == rows.size - 1 and np.all(np.diff(rows) == 1):
        write(int(rows[0]), images)
        return
    for row, image in zip(rows.tolist(), images, strict=True):
        write(row, image[None])


def copy_pixels(manifest: Manifest, key: CacheKey, progress: bool, target: Target) -> Decoded:
    """The rows ``manifest.pixels`` gives (chunks of arrays, as PCam's HDF5 holds them) brought to size and
    written: no file decoded, and the next chunk read while one is written (``_read_ahead``); or, where
    the source stores them as the cache keeps them, copied as a file copy does (``_copy_extents``)."""
    from tqdm import tqdm

    from histo_exp.data.decode import Decoded

    n = len(manifest)
    usable = np.zeros(n, dtype=bool)
    skipped: dict[str, str] = {}
    fitted: Counter = Counter()
    sizes: Counter = Counter()
    with tqdm(total=n, desc="ingest", unit="patch", disable=not progress, mininterval=0.5) as bar:
        if _copy_extents(getattr(manifest.pixels, "extents", None), n, key, target, bar):
            return Decoded(None, np.ones(n, dtype=bool), {})
        with contextlib.closing(_read_ahead(manifest.pixels)) as chunks:  # on an error too: the reader ends
            for rows, images in chunks:
                out, done = _fit(images, key)
                if out is None:
                    why = f"smaller than {key.image_size}px (data.small_patches=drop)"
                    skipped.update((manifest.paths[i], why) for i in rows.tolist())
                else:
                    _write_rows(target.write, rows, out)
                    usable[rows] = True
                    fitted[done] += rows.size
                    if done == "padded":
                        sizes[images.shape[1:3]] += rows.size
                bar.update(rows.size)
    for i in np.flatnonzero(~usable).tolist():
        skipped.setdefault(manifest.paths[i], "no pixels given")
    return Decoded(None, usable, skipped, padded=fitted["padded"], resized=fitted["resized"], sizes=sizes)


def _copy_extents(extents: list[tuple] | None, n: int, key: CacheKey, target: Target, bar) -> bool:
    """All ``n`` rows, stored in their files as the cache keeps them (``extents``: (file, byte offset, first
    row, rows, image shape) each, uint8 in one contiguous run), copied as a file copy copies them; False,
    with nothing copied, where the cache keeps another size or colour (the rows are then read and brought
    to it) or the extents do not hold every row."""
    size = key.image_size
    if (not extents or key.color != "rgb" or sum(e[3] for e in extents) != n
            or any(tuple(shape) != (size, size, 3) for *_, shape in extents)):
        return False
    for path, at, first, rows, _ in extents:
        with open(path, "rb") as src:
            _copy_run(src.fileno(), target, at, first, rows, bar)
    return True


def _copy_run(src: int, target: Target, at: int, first: int, rows: int, bar) -> None:
    """``rows`` rows from byte ``at`` of ``src``: in the kernel (``os.copy_file_range``, what ``cp`` does: no
    pixel passes through Python) where it can, else read and written in pieces."""
    kernel = getattr(os, "copy_file_range", None)
    total, done, dest = rows * target.row_bytes, 0, target.offset + first * target.row_bytes
    while done < total:
        signals.check()
        piece = min(KERNEL_PIECE, total - done)
        if kernel is not None:
            try:
                n = kernel(src, target.fd, piece, at + done, dest + done)
            except OSError as err:
                if done or err.errno not in NO_KERNEL_COPY:
                    raise
                kernel = None  # a kernel or file system that cannot: through Python, from the start
        if kernel is None:
            data = os.pread(src, piece, at + done)
            n = len(data)
            target.write_bytes(data, dest + done)
        if n == 0:
            raise DatasetError(f"a file of {rows} patches ends after {done // target.row_bytes} of them")
        bar.update((done + n) // target.row_bytes - done // target.row_bytes)
        done += n


def _read_ahead(pixels: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]) -> Iterator[tuple]:
    """What ``pixels()`` yields, read one chunk ahead in a thread (h5py's reads and a gzip stream's
    inflating overlap the cache's writes); a stop is seen within ``POLL_S``, and the reading thread has
    ended when this ends, however it ends."""
    from histo_exp.data.decode import POLL_S

    ahead: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                ahead.put(item, timeout=POLL_S)
                return True
        return False

    def read() -> None:
        chunks = None
        try:
            chunks = iter(pixels())
            for item in chunks:
                if not put(item):
                    return
            put(None)
        except BaseException as err:  # handed to the consumer, which raises it
            put(err)
        finally:
            getattr(chunks, "close", lambda: None)()  # a generator's files are closed now, not when collected

    thread = threading.Thread(target=read, name="read-ahead", daemon=True)
    thread.start()
    try:
        while (item := _next(ahead)) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with signals.deferred():  # the reader ends within a chunk; a stop now must not cut the wait short
            thread.join()


def _next(ahead: queue.Queue):
    """The next item; meanwhile a safe point for a stop every ``POLL_S``."""
    from histo_exp.data.decode import POLL_S

    while True:
        signals.check()
        with contextlib.suppress(queue.Empty):
            return ahead.get(timeout=POLL_S)
