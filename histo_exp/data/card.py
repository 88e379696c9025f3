"""The dataset card: a look at the data before any training, and the check for images found twice.

``write_card`` writes a mosaic of a few random patches of each class (``dataset_card.png``), the patches of
each class per patient, with its site where known and its split part (``dataset_card.csv``), and, where
the same image is found under two patients or in two split parts, those copies (``duplicates.csv``).

Images are compared by the hash of their decoded pixels that the cache recorded when it was built
(``hashes.npy``: a cached run reads 8 bytes a row, no pixel), then, for the few rows that share a hash,
by their pixels. A copy under another patient or in another split part is a leak: the model is scored
on images it trained on (or chose its threshold on), and every metric looks better than it is.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from histo_exp import files
from histo_exp.data.cache import HASHES, MANIFEST
from histo_exp.data.cache_arrays import hash_file
from histo_exp.data.split_checks import PARTS

if TYPE_CHECKING:
    from histo_exp.data.dataset import PatchData

log = logging.getLogger(__name__)

CARD_PNG, CARD_CSV, DUPLICATES_CSV = "dataset_card.png", "dataset_card.csv", "duplicates.csv"
PER_CLASS = 8  # patches of each class in the mosaic
PATCH_INCHES, DPI = 1.0, 100  # each patch of the mosaic is 100 px wide, whatever its size in the cache


@dataclass(frozen=True)
class Duplicate:
    """One image found in more than one row, under two patients or in two split parts."""

    rows: tuple[int, ...]  # rows of the cache (and of ``PatchData``'s arrays), ascending
    patients: tuple[str, ...]  # of each row
    parts: tuple[str, ...]  # split part of each row
    pairs: int  # pairs of its rows under two patients or in two parts

    @property
    def first_pair(self) -> tuple[int, int]:
        """Indices (into ``rows``) of the first row and the first that differs from it in patient or part."""
        j = next(j for j in range(1, len(self.rows))
                 if (self.patients[j], self.parts[j]) != (self.patients[0], self.parts[0]))
        return 0, j


def row_hashes(data: PatchData) -> np.ndarray:
    """The cache's hash of each row's pixels; computed from the images where the cache folder has none
    (a ``PatchData`` not loaded from a cache)."""
    try:
        hashes = np.load(data.cache / HASHES)
        if hashes.shape == (len(data.images),):
            return hashes
    except (OSError, ValueError):
        pass
    return hash_file(data.images)


def _part_codes(data: PatchData) -> np.ndarray:
    part = np.full(len(data.labels), -1, dtype=np.int8)
    for code, name in enumerate(PARTS):
        part[getattr(data.split, name)] = code
    return part


def duplicates(data: PatchData) -> list[Duplicate]:
    """Images (identical decoded pixels) found under two patients or in two split parts, among the kept
    rows; a few milliseconds for 277k rows where none share a hash."""
    kept = data.kept
    hashes = row_hashes(data)[kept]
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]
    part = _part_codes(data)
    found = []
    for lo, hi in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist(), strict=True):
        rows = np.sort(kept[order[lo:hi]])
        same = [r for r in rows.tolist() if np.array_equal(data.images[r], data.images[rows[0]])]
        found += _crossing(data, same, part)
    return found


def _crossing(data: PatchData, rows: list[int], part: np.ndarray) -> list[Duplicate]:
    """The rows as one ``Duplicate`` if they are under two patients or in two parts, else none."""
    patients = tuple(str(p) for p in data.patients[rows])
    parts = tuple(PARTS[c] for c in part[rows].tolist())
    held = Counter(zip(patients, parts, strict=True))
    if len(held) < 2:
        return []
    pairs = len(rows) * (len(rows) - 1) // 2 - sum(m * (m - 1) // 2 for m in held.values())
    return [Duplicate(tuple(rows), patients, parts, pairs)]


def row_paths(data: PatchData, rows: list[int]) -> dict[int, str]:
    """The file (or array row) of each of ``rows``, from the cache's ``manifest.csv``; "row N" where unknown."""
    try:
        lines = (data.cache / MANIFEST).read_text().splitlines()[1:]
    except OSError:
        lines = []
    return {r: lines[r].rsplit(",", 4)[0] if r < len(lines) else f"row {r}" for r in rows}


def warn_duplicates(data: PatchData) -> list[Duplicate]:
    """``duplicates``, with a log warning when there are any: how many pairs, the first, what it does."""
    found = duplicates(data)
    if found:
        first = found[0]
        i, j = first.first_pair
        path = row_paths(data, [first.rows[i], first.rows[j]])
        log.warning("%d pairs of identical images under two patients or in two split parts (%d images, %d rows), "
                    "first %s (patient %s, %s) and %s (patient %s, %s): a leak that inflates every metric "
                    "(the model is scored on images it has seen); remove the copies (the dataset card's %s "
                    "lists them: python -m histo_exp.prepare)", sum(d.pairs for d in found), len(found),
                    sum(len(d.rows) for d in found), path[first.rows[i]], first.patients[i], first.parts[i],
                    path[first.rows[j]], first.patients[j], first.parts[j], DUPLICATES_CSV)
    return found


def card_table(data: PatchData) -> str:
    """CSV: patient, site (where known), split part and patches of each class, one line per patient."""
    out = io.StringIO()
    table = csv.writer(out, lineterminator="\n")
    site = data.sites is not None
    table.writerow(["patient"] + ["site"] * site + ["split"] + [f"n_{name}" for name in data.classes])
    for patient, part, where, counts in data.patient_counts():
        table.writerow([patient] + [where] * site + [part] + list(counts))
    return out.getvalue()


def duplicates_table(data: PatchData, found: list[Duplicate]) -> str:
    """CSV: one line per row of each duplicated image (``image`` numbers them), with its file, patient and
    part, the image's pairs that leak, and whether it is one colour (blank glass, say)."""
    out = io.StringIO()
    table = csv.writer(out, lineterminator="\n")
    table.writerow(["image", "path", "patient", "split", "pairs", "one_colour"])
    paths = row_paths(data, [r for d in found for r in d.rows])
    for n, d in enumerate(found, 1):
        flat = np.asarray(data.images[d.rows[0]])
        blank = bool((flat == flat.reshape(-1, flat.shape[-1])[0]).all())
        table.writerows([n, paths[r], p, part, d.pairs, blank] for r, p, part in zip(d.rows, d.patients, d.parts,
                                                                                      strict=True))
    return out.getvalue()


def _strip(images: np.ndarray, rows: np.ndarray, slots: int) -> np.ndarray:
    """``rows``' patches side by side on white, ``slots`` places wide (gray patches shown as RGB)."""
    size = images.shape[1]
    gap = max(1, size // 25)
    strip = np.full((size, slots * (size + gap) - gap, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows.tolist()):
        strip[:, i * (size + gap): i * (size + gap) + size] = images[row]  # (s, s, 1) broadcasts to RGB
    return strip


def mosaic(data: PatchData, path: Path, per_class: int = PER_CLASS, seed: int = 0) -> Path:
    """A PNG of ``per_class`` random patches (seeded) of each class, one row each under its name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from histo_exp.data.dataset import class_label

    rng = np.random.default_rng(seed)
    kept = data.kept
    n = len(data.classes)
    fig, axes = plt.subplots(n, 1, figsize=(per_class * PATCH_INCHES, n * 1.3 * PATCH_INCHES), dpi=DPI,
                             squeeze=False)
    try:
        for c, (name, ax) in enumerate(zip(data.classes, axes[:, 0], strict=True)):
            rows = kept[data.labels[kept] == c]
            pick = np.sort(rng.choice(rows, min(per_class, rows.size), replace=False))
            ax.imshow(_strip(data.images, pick, per_class), interpolation="nearest")
            ax.set_title(f"{class_label(name)}: {rows.size} patches", loc="left", fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        with files.written(path) as partial:
            fig.savefig(partial)
    finally:
        plt.close(fig)
    return path


def write_card(data: PatchData, folder: Path, per_class: int = PER_CLASS, seed: int = 0,
               draw: bool = True) -> list[Path]:
    """The mosaic (``draw``) and the per-patient table in ``folder``, and ``duplicates.csv`` where there are
    copies; the paths written. Each file is whole or absent (``files.written``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [mosaic(data, folder / CARD_PNG, per_class, seed)] if draw else []
    written.append(files.write_text(folder / CARD_CSV, card_table(data)))
    found = duplicates(data)
    if found:
        written.append(files.write_text(folder / DUPLICATES_CSV, duplicates_table(data, found)))
    return written
