"""The ingest cache: every patch decoded once into one uint8 ``.npy`` file, read as a memory map.

A cache folder is named by its key (file list fingerprint, image size, colour mode, small-patch
policy), is built in a temporary sibling and renamed into place only when complete, so a killed
ingest never leaves a cache that looks usable. Processes that want the same cache at once build
it once: the others wait for it (``build_once.build_folder``). Each row's pixels are hashed as it is
built (``hashes.npy``: how the dataset card finds the same image twice without reading a pixel).

Before a cache is reused it is checked against what its key file recorded: the byte size of each
file it reads, the key itself, and the size and times of every file it skipped (so a bad file
fixed in place is decoded again). A cache that does not match is rebuilt, with a log line saying
why; one that cannot be rebuilt is one error naming the folder to delete. The check is a few
``stat`` calls, not a read of the pixels, so some damage goes unnoticed (``_open`` says which).

A source that holds its pixels in arrays (PCam's HDF5: ``Manifest.pixels``) is not decoded but copied
in (``cache_arrays``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from histo_exp.data.build_once import build_folder
from histo_exp.data.cache_arrays import Target, copy_pixels, hash_file
from histo_exp.data.index import Manifest
from histo_exp.errors import EnvironmentFault

log = logging.getLogger(__name__)

IMAGES, USABLE, SKIPPED, KEY, MANIFEST = "images.npy", "keep.npy", "skipped.tsv", "key.json", "manifest.csv"
HASHES = "hashes.npy"  # a uint64 per row, of its pixels (``cache_arrays.hash_rows``; 0 for a skipped row)
# Of key.json: 2 records the files' sizes and the skipped files' stamps; 3 adds hashes.npy. An older cache is
# built again, once, rather than given its hashes in place: a finished cache folder is never changed (other
# processes may be reading it), and one decode is minutes.
FORMAT = 3
CHECKED = (IMAGES, USABLE, SKIPPED, HASHES)  # the files a reuse reads
ABSENT = "there is none yet"


@dataclass(frozen=True)
class CacheKey:
    """Everything the cached pixels depend on."""

    fingerprint: str
    image_size: int
    color: str
    small_patches: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Cached:
    """An opened cache: images of every manifest row (skipped rows are zeros) and which decoded."""

    folder: Path
    images: np.ndarray  # np.memmap, read-only
    usable: np.ndarray
    hashes: np.ndarray  # uint64 per row, of its pixels (0 where skipped)
    skipped: dict[str, str]
    built: bool  # False when an existing cache was reused
    padded: int = 0
    resized: int = 0
    mostly_padding: int = 0  # padded patches that fill under half of the image
    typical: tuple[int, int] | None = None  # the most common (height, width) of those

    @property
    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.folder.iterdir())


def cache_folder(cache_dir: str | os.PathLike, manifest: Manifest, key: CacheKey) -> Path:
    """``<cache_dir>/<dataset folder name>-<key digest>``."""
    return Path(cache_dir).expanduser() / f"{manifest.root.name}-{key.digest}"


def _stamp(path: Path) -> list[int] | None:
    """Size, modification and change time of a file (None when it is gone): a rewrite or a
    ``chmod`` changes them."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns]


class Unusable(Exception):
    """Why a cache folder cannot be reused (its message)."""


def _check_sizes(folder: Path, recorded: dict[str, int]) -> None:
    for name in CHECKED:
        try:
            size = os.stat(folder / name).st_size
        except FileNotFoundError:
            raise Unusable(f"{name} is missing") from None
        if size != recorded.get(name):
            raise Unusable(f"{name} is {size} bytes, not the {recorded.get(name)} it was written with")


def _check_skipped(root: Path, recorded: dict[str, list[int] | None]) -> None:
    changed = [path for path, stamp in recorded.items() if _stamp(root / path) != stamp]
    if changed:
        raise Unusable(f"{len(changed)} of the {len(recorded)} files it skipped changed since it was built, "
                       f"first {changed[0]}")


def _read_key(folder: Path, key: CacheKey, manifest: Manifest) -> dict:
    try:
        stats = json.loads((folder / KEY).read_text())
    except FileNotFoundError:
        raise Unusable(ABSENT if not folder.exists() else f"its {KEY} is missing") from None
    except (OSError, ValueError) as err:
        raise Unusable(f"its {KEY} is unreadable: {err}") from None
    if not isinstance(stats, dict) or stats.get("format") != FORMAT:
        old = stats.get("format", 1) if isinstance(stats, dict) else 1
        raise Unusable(f"its {KEY} was written by an older histo_exp (cache format {old}, this one reads "
                       f"{FORMAT}: file sizes and pixel hashes)")
    if {**asdict(key), "patches": len(manifest)} != {k: stats.get(k) for k in (*asdict(key), "patches")}:
        raise Unusable(f"its {KEY} describes other files or settings")
    return stats


def _open(folder: Path, key: CacheKey, manifest: Manifest, built: bool) -> Cached:
    """The cache in ``folder``, checked against its key file; ``Unusable`` says why it cannot be reused.

    Noticed: a missing or unreadable key file (a build stopped before its end, a file deleted), a
    key for other settings, a file a reuse reads that is missing, of another size (cut short, or
    grown) or not an array of the recorded shape, and a skipped file rewritten, replaced, removed
    or given other permissions (its size, mtime or ctime). The file set is the key's fingerprint
    (the listing and its folders' times): another file set names another folder. Unnoticed
    (the check stats, it reads no pixel): pixels overwritten in place at the same size, a decoded
    (not skipped) file rewritten in place, and a read that failed by chance while the cache was
    built (that file stays skipped until it changes or the folder is deleted).
    """
    stats = _read_key(folder, key, manifest)
    _check_sizes(folder, stats["bytes"])
    _check_skipped(manifest.root, stats["skipped_files"])
    try:
        skipped = dict(line.split("\t", 1) for line in (folder / SKIPPED).read_text().splitlines())
        images, usable = np.load(folder / IMAGES, mmap_mode="r"), np.load(folder / USABLE)
        hashes = np.load(folder / HASHES)
    except (OSError, ValueError) as err:
        raise Unusable(f"it could not be read: {err}") from None
    n, size = len(manifest), key.image_size
    if (images.shape[:3] != (n, size, size) or images.dtype != np.uint8 or usable.shape != (n,)
            or hashes.shape != (n,)):
        raise Unusable(f"its arrays are not of the shape it was written with ({images.shape}, {usable.shape}, "
                       f"{hashes.shape})")
    typical = stats.get("typical")
    return Cached(folder, images, usable, hashes, skipped, built, padded=stats["padded"], resized=stats["resized"],
                  mostly_padding=stats["mostly_padding"], typical=tuple(typical) if typical else None)


def fault(folder: Path, key: CacheKey, manifest: Manifest) -> str | None:
    """Why the cache in ``folder`` cannot be reused for ``key`` and ``manifest`` (see ``_open``); None
    when it can."""
    try:
        _open(folder, key, manifest, built=False)
    except Unusable as why:
        return str(why)
    return None


def _write_manifest(path: Path, manifest: Manifest) -> None:
    columns = (manifest.patients.tolist(), manifest.x.tolist(), manifest.y.tolist(), manifest.labels.tolist())
    rows = "".join(f"{p},{pid},{x},{y},{label}\n" for p, pid, x, y, label in zip(manifest.paths, *columns, strict=True))
    path.write_text("path,patient,x,y,label\n" + rows)


def _build(tmp: Path, manifest: Manifest, key: CacheKey, workers: int | None, progress: bool) -> None:
    from histo_exp.data.decode import COLORS, decode  # OpenCV only where there is something to decode

    tmp.mkdir(parents=True)
    shape = (len(manifest), key.image_size, key.image_size, COLORS[key.color])
    header = np.lib.format.open_memmap(tmp / IMAGES, mode="w+", dtype=np.uint8, shape=shape)
    offset, row_bytes = header.offset, int(np.prod(shape[1:]))
    del header
    hashes = np.zeros(len(manifest), dtype=np.uint64)  # filled as the decoding threads write their rows
    fd = os.open(tmp / IMAGES, os.O_WRONLY)
    try:
        if manifest.pixels is None:
            decoded = decode(manifest, key.image_size, key.color, key.small_patches, workers, progress,
                             write=Target(fd, offset, row_bytes, hashes).write)
        else:  # rows read from arrays are hashed as they are written, while the next chunk is read
            decoded = copy_pixels(manifest, key, progress, Target(fd, offset, row_bytes, hashes))
    finally:
        os.close(fd)  # no fsync: it would wait seconds for the disk; the page cache serves every reader
    if decoded.usable.any() and not hashes[decoded.usable].any():  # copied in the kernel: hashed from the file
        hashes = hash_file(np.load(tmp / IMAGES, mmap_mode="r"), workers)
    hashes[~decoded.usable] = 0
    np.save(tmp / HASHES, hashes)
    np.save(tmp / USABLE, decoded.usable)
    (tmp / SKIPPED).write_text("".join(f"{p}\t{why}\n" for p, why in sorted(decoded.skipped.items())))
    _write_manifest(tmp / MANIFEST, manifest)
    small, typical = decoded.mostly_padding(key.image_size)
    # A skipped file is stamped to notice it fixed in place; rows of an array (no file each) are not:
    # the arrays' files are in the key's fingerprint.
    files = () if manifest.pixels is not None else sorted(decoded.skipped)
    stats = {**asdict(key), "patches": len(manifest), "padded": decoded.padded, "resized": decoded.resized,
             "mostly_padding": small, "typical": typical, "format": FORMAT,
             "bytes": {name: os.stat(tmp / name).st_size for name in CHECKED},
             # stamped after decoding: a file rewritten while it was decoded may go unnoticed
             "skipped_files": {p: _stamp(manifest.root / p) for p in files}}
    (tmp / KEY).write_text(json.dumps(stats, indent=1))  # written last: its presence marks a complete cache


def ingest(
    manifest: Manifest,
    cache_dir: str | os.PathLike,
    image_size: int,
    color: str = "rgb",
    small_patches: str = "pad",
    workers: int | None = None,
    progress: bool = True,
) -> Cached:
    """Open the cache for this manifest and settings, building it first if there is none or it
    cannot be reused (``_open``: then a log line says why)."""
    key = CacheKey(manifest.fingerprint, int(image_size), color, small_patches)
    folder = cache_folder(cache_dir, manifest, key)
    try:
        cached = _open(folder, key, manifest, built=False)
        log.info("reusing the decoded cache %s", folder)
        return cached
    except Unusable as why:
        found = str(why)

    def build(tmp: Path) -> None:  # only the process that holds the build lock gets here
        log.info("%s %d patches into %s", "decoding" if manifest.pixels is None else "copying",
                 len(manifest), folder)
        _build(tmp, manifest, key, workers, progress)

    try:
        built = build_folder(folder, build, lambda final: fault(final, key, manifest) is None,
                             damage=lambda final: fault(final, key, manifest))
        cached = _open(folder, key, manifest, built=built)
    except (OSError, Unusable) as err:
        if found == ABSENT and isinstance(err, OSError):  # a first build that failed: a full disk says so itself
            raise
        why = err if found == ABSENT else f"{found}; building it again failed: {err}"
        raise EnvironmentFault(f"the decoded cache {folder} cannot be used ({why}); "
                               f"delete the folder (rm -r '{folder}') and run again") from err
    if not built:
        log.info("reusing the decoded cache %s that another process built", folder)
    return cached
