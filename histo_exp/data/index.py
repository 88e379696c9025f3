"""Index a folder in the IDC layout: ``<root>/<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<0|1>.png``."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

LAYOUT = "<root>/<patient_id>/<0|1>/<patient_id>_idx5_x<X>_y<Y>_class<0|1>.png"
KAGGLE_TOP = "IDC_regular_ps50_idx5"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
NAME = re.compile(r"^(?P<patient>[^_/]+)_idx5_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<label>[01])\.", re.I)


class DatasetError(ValueError):
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
    sizes: np.ndarray  # bytes per file: a replaced file changes the fingerprint
    ignored: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def fingerprint(self) -> str:
        """A hash of the file list (relative paths and sizes), for cache keys."""
        h = hashlib.sha256()
        for path, size in zip(self.paths, self.sizes.tolist()):
            h.update(f"{path}\0{size}\0".encode())
        return h.hexdigest()[:16]

    def subset(self, keep: np.ndarray) -> "Manifest":
        """The entries selected by ``keep`` (a boolean mask or indices)."""
        idx = np.asarray(keep)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx
        return Manifest(
            self.root, [self.paths[i] for i in idx], self.patients[idx], self.x[idx],
            self.y[idx], self.labels[idx], self.sizes[idx], self.ignored,
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


def index(root: str | os.PathLike, progress: bool = False) -> Manifest:
    """Scan ``root`` and return the manifest; label folders must agree with file names."""
    base = resolve_root(root)
    rows: list[tuple[str, str, int, int, int, int]] = []
    ignored: list[str] = []
    patient_dirs = sorted(p for p in base.iterdir() if p.is_dir())
    for patient_dir in tqdm(patient_dirs, desc="index", unit="patient", disable=not progress):
        for label_dir in sorted(p for p in patient_dir.iterdir() if p.is_dir()):
            if label_dir.name not in ("0", "1"):
                continue
            for entry in sorted(os.scandir(label_dir), key=lambda e: e.name):
                rel = f"{patient_dir.name}/{label_dir.name}/{entry.name}"
                if not entry.is_file() or Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
                    ignored.append(rel)
                    continue
                m = NAME.match(entry.name)
                if m is None:
                    ignored.append(rel)
                    continue
                if m["label"] != label_dir.name:
                    raise DatasetError(
                        f"{label_dir / entry.name}: the file name says class{m['label']} but it "
                        f"lies in folder {label_dir.name}/. Fix or remove the file."
                    )
                rows.append((rel, m["patient"], int(m["x"]), int(m["y"]), int(m["label"]),
                             entry.stat().st_size))
    if not rows:
        raise DatasetError(
            f"no patches found under {str(base)!r}; expected {LAYOUT}"
            + (f" ({len(ignored)} other files were ignored)" if ignored else "")
        )
    paths, patients, xs, ys, labels, sizes = zip(*rows)
    return Manifest(
        root=base,
        paths=list(paths),
        patients=np.array(patients),
        x=np.array(xs, dtype=np.int32),
        y=np.array(ys, dtype=np.int32),
        labels=np.array(labels, dtype=np.int8),
        sizes=np.array(sizes, dtype=np.int64),
        ignored=ignored,
    )
