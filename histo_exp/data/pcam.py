"""PatchCamelyon (``data=pcam``): the benchmark's files as published (Veeling et al. 2018).

    <root>/camelyonpatch_level_2_split_{train,valid,test}_x.h5    dataset x: uint8 (N, 96, 96, 3)
           camelyonpatch_level_2_split_{train,valid,test}_y.h5    dataset y: uint8 (N, 1, 1, 1), 1 = tumour
           camelyonpatch_level_2_split_{train,valid,test}_meta.csv  ,coord_y,coord_x,tumor_patch,center_tumor_patch,wsi

Each ``.h5`` may be the published ``.h5.gz`` (the whole file gzipped); ``.h5`` wins when both are there.
The benchmark's split is kept (``Manifest.parts``: valid -> val, test -> test; data.val_fraction and
data.test_fraction are ignored, and ``dataset.load`` logs so), the patient is the slide (``wsi``), and the pixels go to the cache in
chunks read with h5py (``Manifest.pixels``), not one image file per patch; the rows of a plain ``.h5``
at the cache's size are copied as ``cp`` copies (``pixels``' ``extents``).

A gzipped file is read as a stream where it can be, else unzipped once (``gzip_files``).
"""

from __future__ import annotations

import contextlib
import csv
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from histo_exp.data.gzip_files import Gunzipped, TooFar, unzip, unzipped_folder
from histo_exp.data.index import DatasetError, Manifest
from histo_exp.settings import Data

log = logging.getLogger(__name__)

PREFIX = "camelyonpatch_level_2_split_"
PARTS = {"train": "train", "valid": "val", "test": "test"}  # file part -> split part
CLASSES = ("normal", "tumour")  # y = 0, 1 (1: metastatic tissue in the centre 32x32)
META = ("coord_y", "coord_x", "wsi")  # the columns used, after the unnamed index column
LAYOUT = f"{PREFIX}{{train,valid,test}}_{{x,y}}.h5 (or .h5.gz, as published) and {PREFIX}{{...}}_meta.csv"
CHUNK = 4096  # rows per read: 113 MB of 96 px patches, the bound on what a read holds
PROBE = 64 * 2**20  # how far into a gzipped file its header may lie before it is unzipped instead


@dataclass
class Part:
    """One part's images: the file that holds them (opened with ``open_h5``) and where they go."""

    name: str  # the split part: train, val, test
    x: Path
    rows: int
    first: int = 0  # the manifest row of its first patch
    stored: tuple[int, tuple[int, ...]] | None = None  # byte offset and shape of the rows stored plainly in x


@contextlib.contextmanager
def open_h5(path: Path, limit: int | None = None) -> Iterator[h5py.File]:
    """``path`` opened with h5py, a ``.gz`` as a stream; a file h5py cannot read is a ``DatasetError``."""
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(Gunzipped(path, limit)) if path.name.endswith(".gz") else path
        try:  # h5py passes on what the file object raises (TooFar, a gzip error) as it is
            f = stack.enter_context(h5py.File(source, "r"))
        except (OSError, EOFError) as err:
            raise DatasetError(f"{path}: not a readable HDF5 file ({err}); expected {LAYOUT}") from None
        yield f


def _find(root: Path, part: str, kind: str) -> Path:
    """The part's ``x`` or ``y`` file: ``.h5``, else ``.h5.gz``."""
    name = f"{PREFIX}{part}_{kind}.h5"
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{root} has no {name} (nor {name}.gz); data=pcam expects {LAYOUT}")


def _dataset(f: h5py.File, path: Path, key: str) -> h5py.Dataset:
    ds = f.get(key)
    if not isinstance(ds, h5py.Dataset):
        raise DatasetError(f"{path}: no dataset {key!r} (it holds {sorted(f)}); expected {LAYOUT}")
    return ds


def _check_x(ds: h5py.Dataset, path: Path) -> int:
    """The rows of an image dataset: uint8 (N, height, width, 3)."""
    if ds.dtype != np.uint8 or ds.ndim != 4 or ds.shape[3] != 3:
        raise DatasetError(f"{path}: dataset 'x' is {ds.dtype} {ds.shape}, not uint8 (N, 96, 96, 3) RGB patches")
    return ds.shape[0]


def _labels(path: Path) -> np.ndarray:
    """The 0/1 labels of a ``y`` file: uint8 (N, 1, 1, 1)."""
    with open_h5(path) as f:
        ds = _dataset(f, path, "y")
        if ds.dtype != np.uint8 or ds.ndim < 1 or int(np.prod(ds.shape[1:])) != 1:
            raise DatasetError(f"{path}: dataset 'y' is {ds.dtype} {ds.shape}, not uint8 (N, 1, 1, 1) labels")
        labels = ds[()].reshape(-1)
    if labels.size and labels.max() > 1:
        raise DatasetError(f"{path}: dataset 'y' holds {int(labels.max())}; labels are 0 (normal) and 1 (tumour)")
    return labels.astype(np.int8)


def _meta(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The patient (``wsi``), x and y of each row of a meta CSV."""
    if not path.is_file():
        raise DatasetError(f"{path.parent} has no {path.name}; data=pcam expects {LAYOUT}")
    with open(path, newline="") as f:
        lines = csv.reader(f)
        header = next(lines, [])
        missing = [c for c in META if c not in header]
        if missing:
            raise DatasetError(f"{path}: no column {', '.join(missing)} in its header {header}; "
                               "expected ,coord_y,coord_x,tumor_patch,center_tumor_patch,wsi")
        cols = [header.index(c) for c in META]
        try:
            table = [[row[c] for c in cols] for row in lines]
        except IndexError:
            raise DatasetError(f"{path}: line {lines.line_num} has fewer columns than its header") from None
    ys, xs, wsi = zip(*table, strict=True) if table else ((), (), ())
    try:
        return np.array(wsi, dtype=str), np.array(xs, dtype=np.int32), np.array(ys, dtype=np.int32)
    except ValueError as err:
        raise DatasetError(f"{path}: coord_x and coord_y must be whole numbers ({err})") from None


def _stamps(files: list[Path]) -> dict[str, int]:
    """Each source file's size and modification time: a file replaced or rewritten changes the cache key."""
    out = {}
    for path in files:
        info = path.stat()
        out[f"{path.name} bytes"] = info.st_size
        out[f"{path.name} mtime_ns"] = info.st_mtime_ns
    return out


def _images(path: Path, cfg: Data, progress: bool) -> Part:
    """The part's images: the file to read them from (``path``, or its unzipped copy) and their rows."""
    gz = path.name.endswith(".gz")
    try:
        with open_h5(path, PROBE if gz else None) as f:
            ds = _dataset(f, path, "x")
            rows = _check_x(ds, path)
            if not gz:
                return Part("", path, rows, stored=_stored(ds, path))
            if ds.chunks is None:
                return Part("", path, rows)
    except TooFar:
        pass
    copy = unzip(path, unzipped_folder(cfg, path.parent), progress)
    with open_h5(copy) as f:
        ds = _dataset(f, path, "x")
        return Part("", copy, _check_x(ds, path), stored=_stored(ds, copy))


def _stored(ds: h5py.Dataset, path: Path) -> tuple[int, tuple[int, ...]] | None:
    """Where the rows lie in the file when it stores them as the cache does (one contiguous run of
    uint8, no filter, in the file itself): the cache may then copy them as a file copy does. Checked
    on the first row."""
    offset = ds.id.get_offset() if ds.chunks is None and ds.external is None and ds.shape[0] else None
    if offset is None:
        return None
    first = ds[0].tobytes()
    with open(path, "rb") as f:
        f.seek(offset)
        return (offset, ds.shape[1:]) if f.read(len(first)) == first else None


def _read_part(root: Path, part: str, cfg: Data, progress: bool):
    """A part's images, labels and meta data, checked to agree."""
    sources = {kind: _find(root, part, kind) for kind in ("x", "y")}
    meta_path = root / f"{PREFIX}{part}_meta.csv"
    patients, xs, ys = _meta(meta_path)
    images = _images(sources["x"], cfg, progress)
    images.name = PARTS[part]
    labels = _labels(sources["y"])
    for path, n in ((sources["y"], labels.size), (meta_path, patients.size)):
        if n != images.rows:
            raise DatasetError(f"{path} has {n} rows but {sources['x'].name} has {images.rows}: the files "
                               f"of part {part!r} must describe the same patches")
    return images, labels, (patients, xs, ys), [*sources.values(), meta_path]


def read(cfg: Data, progress: bool = True) -> Manifest:
    """The PCam manifest: paths ``"<part>/<row>"``, the benchmark's parts, the slide as the patient."""
    root = Path(cfg.root).expanduser() if cfg.root else None
    if root is None or not root.is_dir():
        raise DatasetError(f"data.root {cfg.root!r} is not a folder; data=pcam expects {LAYOUT} in it")
    parts, labels, meta, files = [], [], [], []
    for part in PARTS:
        got = _read_part(root, part, cfg, progress)
        got[0].first = sum(p.rows for p in parts)
        parts.append(got[0])
        labels.append(got[1])
        meta.append(got[2])
        files += got[3]
    patients, xs, ys = (np.concatenate(column) for column in zip(*meta, strict=True))
    _warn_shared_slides(parts, patients)  # (dataset.load logs that the fractions are ignored for given parts)
    return Manifest(
        root=root,
        paths=[f"{p.name}/{i:06d}" for p in parts for i in range(p.rows)],
        patients=patients, x=xs, y=ys, labels=np.concatenate(labels),
        stamps=_stamps(files), classes=CLASSES,
        parts=np.repeat([p.name for p in parts], [p.rows for p in parts]),
        pixels=pixels(parts),
    )


def _warn_shared_slides(parts: list[Part], patients: np.ndarray) -> None:
    """The published parts share no slide; say so when these do (the parts are used as given)."""
    bounds = np.cumsum([0, *(p.rows for p in parts)])
    seen = [set(np.unique(patients[lo:hi]).tolist()) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    shared = sorted((seen[0] & seen[1]) | (seen[0] & seen[2]) | (seen[1] & seen[2]))
    if shared:
        log.warning("data=pcam: %d slides have patches in two parts (first %s); the parts are used as given",
                    len(shared), shared[0])


def pixels(parts: list[Part]) -> Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]:
    """For ``Manifest.pixels``: each part's rows in order, ``CHUNK`` at a time, as (manifest rows, images);
    each chunk a new array, so that one may be written while the next is read.

    Where every part's file stores its rows plainly (a ``.h5``, contiguous), the function also carries
    ``extents``: (file, byte offset, first manifest row, rows, image shape) each, which the cache copies
    as a file copy does when it keeps the images as they are (``cache_arrays._copy_extents``); else None.
    """

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        chunk = CHUNK
        for part in parts:
            with open_h5(part.x) as f:
                ds = f["x"]
                for lo in range(0, part.rows, chunk):
                    hi = min(lo + chunk, part.rows)
                    images = np.empty((hi - lo, *ds.shape[1:]), dtype=np.uint8)
                    try:
                        ds.read_direct(images, np.s_[lo:hi])
                    except (OSError, EOFError) as err:  # a file cut short, a damaged gzip stream
                        raise DatasetError(f"{part.x}: rows {lo} to {hi} cannot be read ({err})") from None
                    yield np.arange(part.first + lo, part.first + hi), images

    plain = all(p.stored is not None for p in parts)
    chunks.extents = [(p.x, p.stored[0], p.first, p.rows, p.stored[1]) for p in parts] if plain else None
    return chunks
