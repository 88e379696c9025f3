"""Index a folder in the IDC layout: ``<root>/<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<0|1>.png``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histo_exp.errors import UsageError

LAYOUT = "<root>/<patient_id>/<0|1>/<patient_id>_idx5_x<X>_y<Y>_class<0|1>.png"
KAGGLE_TOP = "IDC_regular_ps50_idx5"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# One name per line; findall parses a whole folder in C (277,524 files in well under a second).
NAME = re.compile(r"^(([^_/\n]+)_idx5_x(\d+)_y(\d+)_class([01])\.[^\n]*)$", re.I | re.M)


class DatasetError(UsageError):
    """The data folder does not hold a usable IDC-layout dataset."""


@dataclass
class Manifest:
    """Every indexed patch, one entry per file, in a stable (sorted) order."""

    root: Path
    paths: list[str]
    patients: np.ndarray
    x: np.ndarray
    y: np.ndarray
    labels: np.ndarray
    # Modification time of each label folder: files added, removed or renamed change it.
    stamps: dict[str, int] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    # ``labels`` index these names; IDC's layout: "0" (no IDC) and "1" (IDC).
    classes: tuple[str, ...] = ("0", "1")
    sites: np.ndarray | None = None  # each patch's site (hospital, lab, scanner), where the source names it
    parts: np.ndarray | None = None  # each patch's split part ("train", "val", "test") where the source gives it
    # Where the pixels come from when they are not one image file per path (PCam's HDF5 arrays): chunks
    # of (rows, uint8 RGB images at their own size), for the cache; None: each path is decoded.
    pixels: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def fingerprint(self) -> str:
        """A hash of the file list and its folders' times, for cache keys."""
        text = "\n".join(self.paths) + "\0" + repr(sorted(self.stamps.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def subset(self, rows: np.ndarray) -> Manifest:
        """The entries selected by ``rows`` (a boolean mask or indices)."""
        idx = np.asarray(rows)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx
        return Manifest(
            self.root, [self.paths[i] for i in idx], self.patients[idx], self.x[idx],
            self.y[idx], self.labels[idx], self.stamps, self.ignored, self.classes,
            None if self.sites is None else self.sites[idx], None if self.parts is None else self.parts[idx],
        )


def resolve_root(root: str | os.PathLike) -> Path:
    """The folder that holds the patient folders (steps into Kaggle's extra top folder)."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(
            f"data.root {str(path)!r} does not exist or is not a folder. Point it at the "
            f"IDC dataset, laid out as {LAYOUT}"
        )
    nested = path / KAGGLE_TOP
    return nested if nested.is_dir() else path


def _scan_label_folder(folder: Path, label: str, prefix: str) -> tuple[list[tuple], list[str]]:
    """Parsed ``(name, patient, x, y, label)`` rows of one label folder, and the names ignored."""
    names = sorted(os.listdir(folder))
    images = [n for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
    rows = NAME.findall("\n".join(images))
    ignored = [n for n in names if not n.lower().endswith(IMAGE_SUFFIXES)] if len(images) < len(names) else []
    if len(rows) != len(images):
        parsed = {r[0] for r in rows}
        ignored += [n for n in images if n not in parsed]
    wrong = next((r[0] for r in rows if r[4] != label), None)
    if wrong is not None:
        raise DatasetError(
            f"{folder / wrong}: the file name says class{1 - int(label)} but it lies in folder "
            f"{label}/. Fix or remove the file."
        )
    return rows, [prefix + n for n in sorted(ignored)]


def folder_stamps(base: Path) -> dict[str, int]:
    """The modification time of each ``<patient>/<0|1>/`` folder, keyed ``"<patient>/<label>/"``:
    what a listing depends on, read in milliseconds (one stat per folder, no file listed)."""
    stamps = {}
    for patient in sorted(entry.name for entry in os.scandir(base) if entry.is_dir()):
        for label in ("0", "1"):
            try:
                info = os.stat(base / patient / label)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if stat.S_ISDIR(info.st_mode):
                stamps[f"{patient}/{label}/"] = info.st_mtime_ns
    return stamps


def index(root: str | os.PathLike, progress: bool = False, memo: Path | None = None) -> Manifest:
    """Scan ``root`` and return the manifest; label folders must agree with file names.

    With ``memo`` (a folder), a listing ``save_listing`` saved there is reused while no label folder
    changed (a file added, removed or renamed changes its folder's time): a re-run lists nothing.
    """
    base = resolve_root(root)
    stamps = folder_stamps(base)  # before listing: a file added meanwhile makes the next run list again
    kept = memo / f"{_listing_key(base, stamps)}.npz" if memo else None
    if kept is not None and kept.exists():
        try:
            return _load_listing(kept, base)
        except (OSError, ValueError, KeyError):  # unreadable: list again, and save_listing replaces it
            kept.unlink(missing_ok=True)
    from tqdm import tqdm  # not on the path of a run that lists nothing

    paths: list[str] = []
    patients: list[str] = []
    xs: list[str] = []
    ys: list[str] = []
    labels: list[str] = []
    ignored: list[str] = []
    for prefix in tqdm(stamps, desc="index", unit="folder", disable=not progress):
        label = prefix[-2]
        rows, skipped = _scan_label_folder(base / prefix, label, prefix)
        ignored += skipped
        if rows:
            names, pids, x, y, lab = zip(*rows, strict=True)
            paths += [prefix + n for n in names]
            patients += pids
            xs += x
            ys += y
            labels += lab
    if not paths:
        raise DatasetError(
            f"no patches found under {str(base)!r}; expected {LAYOUT}"
            + (f" ({len(ignored)} other files were ignored)" if ignored else "")
        )
    return Manifest(
        root=base,
        paths=paths,
        patients=np.array(patients),
        x=np.fromiter(map(int, xs), np.int32, len(xs)),  # a third of the time of np.array(strings).astype
        y=np.fromiter(map(int, ys), np.int32, len(ys)),
        labels=np.fromiter(map(int, labels), np.int8, len(labels)),
        stamps=stamps,
        ignored=ignored,
    )


def _listing_key(base: Path, stamps: dict[str, int]) -> str:
    text = f"{base.resolve()}\0{sorted(stamps.items())!r}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def save_listing(memo: Path, manifest: Manifest) -> None:
    """Save ``manifest`` in ``memo`` for ``index`` to reuse; written whole or not at all."""
    path = memo / f"{_listing_key(manifest.root, manifest.stamps)}.npz"
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, paths=np.array(["\n".join(manifest.paths).encode()]), patients=manifest.patients,
                     x=manifest.x, y=manifest.y, labels=manifest.labels,
                     meta=np.array([json.dumps({"stamps": manifest.stamps, "ignored": manifest.ignored})]))
        os.replace(tmp, path)
    except OSError:  # a read-only or full cache folder: the next run lists the folders again
        tmp.unlink(missing_ok=True)


def _load_listing(path: Path, base: Path) -> Manifest:
    with np.load(path) as kept:
        meta = json.loads(str(kept["meta"][0]))
        return Manifest(root=base, paths=kept["paths"][0].decode().split("\n"), patients=kept["patients"],
                        x=kept["x"], y=kept["y"], labels=kept["labels"], stamps=meta["stamps"],
                        ignored=meta["ignored"])


def images_under(source: Path) -> list[str]:
    """The images under ``source``, relative and sorted, each file once whatever the tree holds.

    Linked folders are followed (a tree of links picks patients without copying them), but a folder is
    entered once (a link loop, or a link to a folder inside the tree, is not walked again), and a file
    reached by two names (a link to it, a folder linked twice) is listed once: under its own path when
    it lies in the tree, else under the first name found. Only links cost a system call.
    """
    top = os.path.realpath(source)
    entered: set[str] = set()
    found: dict[str, str] = {}  # real path -> the name it is listed under
    stack = [(str(source), top)]
    while stack:
        folder, real = stack.pop()
        if real in entered:
            continue
        entered.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)  # the same names, whatever the disk's order
        except OSError:  # unreadable, or gone meanwhile: as os.walk, skipped
            continue
        for entry in entries:
            target = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real, entry.name)
            if entry.is_dir():
                stack.append((entry.path, target))
            elif entry.name.lower().endswith(IMAGE_SUFFIXES):
                found.setdefault(target, entry.path)
    inside = top + os.sep
    return sorted({os.path.relpath(real, top) if real.startswith(inside) else os.path.relpath(path, source)
                   for real, path in found.items()})


def index_files(source: str | os.PathLike) -> Manifest:
    """Any image, or the images under a folder (sorted): patient, x, y and label where the file
    name carries them in the IDC layout, else "" and -1. For prediction, where labels are optional."""
    source = Path(source).expanduser()
    if source.is_file():
        root, files = source.parent, [source.name]
    elif source.is_dir():
        root = source
        files = images_under(source)
    else:
        raise DatasetError(f"input {str(source)!r} is neither a file nor a folder")
    if not files:
        raise DatasetError(f"no PNG, JPEG, TIFF or BMP images under {str(source)!r}")
    parsed = [NAME.match(Path(f).name) for f in files]
    return Manifest(
        root=root, paths=files,
        patients=np.array([m[2] if m else "" for m in parsed]),
        x=np.array([int(m[3]) if m else -1 for m in parsed], dtype=np.int32),
        y=np.array([int(m[4]) if m else -1 for m in parsed], dtype=np.int32),
        labels=np.array([int(m[5]) if m else -1 for m in parsed], dtype=np.int8),
    )
