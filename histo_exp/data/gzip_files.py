"""The published ``.h5.gz`` files of PatchCamelyon, read without unzipping them where that can be done.

A gzipped file is read as a stream, not unzipped: h5py reads a Python file object, and the header,
the labels and the rows of an unchunked (contiguous) dataset are read front to back, so nothing is
written but the cache (the unzipped train file alone is 7 GiB). Only a dataset stored in HDF5 chunks,
whose index may send reads backwards (each one decompressing again from the top), is unzipped once into
``<cache_dir>/pcam-unzipped/`` and read from there.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
from pathlib import Path

from histo_exp.locks import lock_file
from histo_exp.settings import Data

log = logging.getLogger(__name__)

FAR = 2**62  # the size a gzip stream reports: HDF5 only checks that a file is not shorter than it says
UNZIP_BLOCK = 16 * 2**20
LOCK_WAIT_S = 3600.0


class TooFar(Exception):
    """A read past ``Gunzipped``'s ``limit``: the caller unzips the file instead."""


class Gunzipped(io.RawIOBase):
    """A ``.gz`` file as the seekable file object h5py reads: a seek forward decompresses and skips, one
    backward starts again from the top (only a file read front to back is fast), and the end is far off
    (gzip does not record the size of a file over 4 GiB). With ``limit``, reading past that offset
    raises ``TooFar``: a header that lies deep in the file is not worth streaming."""

    def __init__(self, path: Path, limit: int | None = None) -> None:
        super().__init__()
        self._gz = gzip.open(path, "rb")
        self._at_end = False
        self._limit = limit

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._at_end = whence == io.SEEK_END
        if self._at_end:
            return FAR
        if self._limit is not None and (offset if whence == io.SEEK_SET else self.tell() + offset) > self._limit:
            raise TooFar
        return self._gz.seek(offset, whence)

    def tell(self) -> int:
        return FAR if self._at_end else self._gz.tell()

    def readinto(self, buffer) -> int:  # h5py takes a short read for the end of the file: fill it
        view = memoryview(buffer).cast("B")
        if self._limit is not None and self._gz.tell() + len(view) > self._limit:
            raise TooFar
        got = 0
        while got < len(view):
            n = self._gz.readinto(view[got:])
            if not n:
                break
            got += n
        return got

    def close(self) -> None:
        self._gz.close()
        super().close()


def unzipped_folder(cfg: Data, root: Path) -> Path:
    """Where a chunked ``.h5.gz`` is unzipped: one folder per dataset folder, beside the caches."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return Path(cfg.cache_dir).expanduser() / "pcam-unzipped" / f"{root.name}-{digest}"


def unzip(src: Path, folder: Path, progress: bool) -> Path:
    """``src`` (a ``.h5.gz``) unzipped into ``folder`` once: named by its size and time, so a replaced
    file is unzipped again (the older copy removed), written to a temporary name and renamed."""
    info = src.stat()
    stem = src.name.removesuffix(".h5.gz")
    dest = folder / f"{stem}-{info.st_size}-{info.st_mtime_ns}.h5"
    with lock_file(folder / f"{stem}.lock", f"unzips {src}", LOCK_WAIT_S):
        if dest.is_file():
            return dest
        for old in folder.glob(f"{stem}-*.h5"):
            old.unlink(missing_ok=True)
        log.info("unzipping %s into %s (HDF5 chunks cannot be streamed; delete the folder once the "
                 "caches are built: it is made again only to build another)", src, dest)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            _gunzip(src, tmp, progress)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return dest


def _gunzip(src: Path, dest: Path, progress: bool) -> None:
    """``src`` inflated into ``dest`` a block at a time (a bounded read, however big the file), with a bar."""
    from tqdm import tqdm

    with open(src, "rb") as raw, gzip.GzipFile(fileobj=raw) as gz, open(dest, "wb") as out, tqdm(
        total=src.stat().st_size, desc=f"unzip {src.name}", unit="B", unit_scale=True, disable=not progress
    ) as bar:
        while block := gz.read(UNZIP_BLOCK):
            out.write(block)
            bar.update(raw.tell() - bar.n)
