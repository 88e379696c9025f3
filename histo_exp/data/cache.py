"""The ingest cache: every patch decoded once into one uint8 ``.npy`` file, read as a memory map.

A cache folder is named by its key (file list fingerprint, image size, colour mode, small-patch
policy), is built in a temporary sibling and renamed into place only when complete, so a killed
ingest never leaves a cache that looks usable. Processes that want the same cache at once build
it once: the others wait for it (``build_once.build_folder``).
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
from histo_exp.data.index import Manifest

log = logging.getLogger(__name__)

IMAGES, USABLE, SKIPPED, KEY, MANIFEST = "images.npy", "keep.npy", "skipped.tsv", "key.json", "manifest.csv"


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
    skipped: dict[str, str]
    built: bool  # False when an existing cache was reused
    padded: int = 0
    resized: int = 0

    @property
    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.folder.iterdir())


def cache_folder(cache_dir: str | os.PathLike, manifest: Manifest, key: CacheKey) -> Path:
    """``<cache_dir>/<dataset folder name>-<key digest>``."""
    return Path(cache_dir).expanduser() / f"{manifest.root.name}-{key.digest}"


def _open(folder: Path, built: bool) -> Cached:
    skipped = {}
    for line in (folder / SKIPPED).read_text().splitlines():
        path, _, why = line.partition("\t")
        skipped[path] = why
    stats = json.loads((folder / KEY).read_text())
    return Cached(folder, np.load(folder / IMAGES, mmap_mode="r"), np.load(folder / USABLE), skipped,
                  built, padded=stats["padded"], resized=stats["resized"])


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
    fd = os.open(tmp / IMAGES, os.O_WRONLY)

    def write(first: int, rows: np.ndarray) -> None:  # from the decoding threads: pwrite releases the GIL
        data, at = memoryview(rows).cast("B"), offset + first * row_bytes
        while data:
            done = os.pwrite(fd, data, at)
            data, at = data[done:], at + done

    try:
        decoded = decode(manifest, key.image_size, key.color, key.small_patches, workers, progress, write=write)
    finally:
        os.close(fd)  # no fsync: it would wait seconds for the disk; the page cache serves every reader
    np.save(tmp / USABLE, decoded.usable)
    (tmp / SKIPPED).write_text("".join(f"{p}\t{why}\n" for p, why in sorted(decoded.skipped.items())))
    _write_manifest(tmp / MANIFEST, manifest)
    # Written last: its presence marks a complete cache.
    fitted = {"padded": decoded.padded, "resized": decoded.resized}
    (tmp / KEY).write_text(json.dumps({**asdict(key), "patches": len(manifest), **fitted}, indent=1))


def ingest(
    manifest: Manifest,
    cache_dir: str | os.PathLike,
    image_size: int,
    color: str = "rgb",
    small_patches: str = "pad",
    workers: int | None = None,
    progress: bool = True,
) -> Cached:
    """Open the cache for this manifest and settings, building it first if there is none."""
    key = CacheKey(manifest.fingerprint, int(image_size), color, small_patches)
    folder = cache_folder(cache_dir, manifest, key)
    if (folder / KEY).exists():
        log.info("reusing the decoded cache %s", folder)
        return _open(folder, built=False)

    def build(tmp: Path) -> None:  # only the process that holds the build lock gets here
        log.info("decoding %d patches into %s", len(manifest), folder)
        _build(tmp, manifest, key, workers, progress)

    built = build_folder(folder, build, lambda final: (final / KEY).exists())
    if not built:
        log.info("reusing the decoded cache %s that another process built", folder)
    return _open(folder, built=built)
