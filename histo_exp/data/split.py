"""Group-level train/val/test split: no patient's patches (with ``data.group_by=site``, no site's) in two parts.

Labels index the dataset's classes, any number of them; train, validation and test each hold every class,
stratified as far as the groups allow. Where the source gives each patch's part (a manifest's split
column, PCam's own files) the parts are used as given. What a split must hold is checked first, on the
labels alone (``split_checks``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histo_exp.data.index import DatasetError
from histo_exp.data.split_checks import PARTS, check_given, check_splittable, class_groups, class_names, every

log = logging.getLogger(__name__)

ATTEMPTS = 50


@dataclass
class Split:
    """Indices of each part into the patch arrays, and the patient each part holds."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def patients(self, patients: np.ndarray) -> dict[str, str]:
        """Patient (or site, given the sites) -> part name, for the split CSV."""
        return {str(p): part for part in PARTS for p in np.unique(patients[getattr(self, part)])}


def _holds(labels: np.ndarray, n: int) -> bool:
    return np.unique(labels).size == n


def _hold_out(labels, groups, fraction: float, seed: int, n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """One fold of about ``fraction`` of the patches, stratified by label, grouped by ``groups``.

    The first of the splitter's folds whose held-out part holds all ``n`` classes (else its first fold).
    """
    from sklearn.model_selection import StratifiedGroupKFold  # a second of import: only when a split is made

    folds = max(2, round(1.0 / fraction))
    n_groups = len(np.unique(groups))
    if n_groups < folds:
        folds = n_groups
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    candidates = list(splitter.split(np.zeros(len(labels)), labels, groups))
    return next(((rest, held) for rest, held in candidates if _holds(labels[held], n)), candidates[0])


def _attempt(labels, groups, val_fraction: float, test_fraction: float, seed: int, n: int) -> Split:
    if test_fraction:
        rest, test = _hold_out(labels, groups, test_fraction, seed, n)
    else:
        rest, test = np.arange(labels.size), np.array([], dtype=int)
    inner, val = _hold_out(labels[rest], groups[rest], val_fraction / (1 - test_fraction), seed, n)
    return Split(train=rest[inner], val=rest[val], test=test)


def split_by_patient(
    labels: np.ndarray, patients: np.ndarray, val_fraction: float, test_fraction: float, seed: int, *,
    classes: Sequence[str] | None = None, group: str = "patient",
) -> Split:
    """Split by patient (``patients`` are the groups: with ``group="site"`` the sites), stratified by
    label as far as the groups allow, deterministically.

    Tries successive seeds until train, validation and test each hold every class, because AUC is
    undefined without them; fails with a clear error when the groups cannot give that.
    ``test_fraction=0`` holds out no test patients (they live elsewhere, e.g. a leave-patients-out
    benchmark that predicts them with ``histo_exp.predict``).
    """
    check_splittable(labels, patients, val_fraction, test_fraction, classes=classes, group=group)
    names = class_names(classes, labels)
    parts_needed = PARTS if test_fraction else PARTS[:2]
    for attempt in range(ATTEMPTS):
        parts = _attempt(labels, patients, val_fraction, test_fraction, seed + attempt * 7919, len(names))
        if all(_holds(labels[getattr(parts, p)], len(names)) for p in parts_needed):
            return Split(*(np.sort(getattr(parts, p)) for p in PARTS))
    counts = class_groups(labels, patients, len(names))
    rare = int(np.argmin(counts))
    raise DatasetError(
        f"could not split {np.unique(patients).size} {group}s so that {', '.join(parts_needed)} each hold "
        f"{every(names)} (class {names[rare]} is under only {counts[rare]} of them); add {group}s or change "
        "data.val_fraction / data.test_fraction"
    )


def _digest(kept: np.ndarray, labels: np.ndarray, groups: np.ndarray, names: tuple[str, ...]) -> str:
    """What a kept split was made of: a split saved for other labels or groups is not read back."""
    h = hashlib.sha256(np.asarray(kept, np.int64).tobytes())
    h.update(np.asarray(labels[kept], np.int64).tobytes())
    h.update("\0".join(map(str, groups[kept].tolist())).encode())
    h.update("\0".join(names).encode())
    return h.hexdigest()[:20]


def split_once(folder: Path, kept: np.ndarray, labels: np.ndarray, patients: np.ndarray, val_fraction: float,
               test_fraction: float, seed: int, *, classes: Sequence[str] | None = None, group: str = "patient",
               parts: np.ndarray | None = None) -> Split:
    """``split_by_patient`` of the ``kept`` rows (``patients``: the groups), made once per cache and
    settings and saved in the cache ``folder``: a run on a cached dataset then reads it (and imports no
    scikit-learn). With ``parts`` (each row's part, as the source gives it) those parts, as given."""
    if parts is not None:
        check_given(labels[kept], patients[kept], parts[kept], classes, group)
        return Split(*(kept[np.asarray(parts[kept]).astype(str) == part] for part in PARTS))
    by = "" if group == "patient" else f"{group}-"
    path = folder / f"split-{by}val{val_fraction:g}-test{test_fraction:g}-seed{seed}.npz"
    key = _digest(kept, labels, patients, class_names(classes, labels))
    try:
        with np.load(path) as saved:
            if str(saved["key"]) == key:
                return Split(*(saved[part] for part in PARTS))
    except (OSError, KeyError, ValueError):
        pass
    inner = split_by_patient(labels[kept], patients[kept], val_fraction, test_fraction, seed, classes=classes,
                             group=group)
    split = Split(*(kept[getattr(inner, part)] for part in PARTS))
    partial = folder / f".{path.stem}.{os.getpid()}.npz"
    try:
        np.savez(partial, key=np.array(key), **{part: getattr(split, part) for part in PARTS})
        partial.replace(path)
    except OSError as err:  # a read-only cache: split again next time
        log.debug("could not keep the split in %s (%s)", folder, err)
    return split


def max_folds(labels: np.ndarray, patients: np.ndarray, n: int = 2) -> int:
    """How many grouped folds can each hold all ``n`` classes: the patients (groups) holding the rarest.

    A patient holding two classes counts for both.
    """
    return int(class_groups(labels, patients, n).min()) if labels.size else 0


def patient_folds(labels: np.ndarray, patients: np.ndarray, rows: np.ndarray, k: int, seed: int, *,
                  classes: Sequence[str] | None = None, group: str = "patient") -> list[tuple[np.ndarray, np.ndarray]]:
    """K patient-grouped (``patients``: the groups, sites with ``group="site"``), label-stratified
    (train rows, validation rows) folds of ``rows``.

    Every validation fold holds every class (AUC needs them), so ``k`` is capped by the patients that
    hold the rarest class, with a warning, never an error; 1 fold means no CV.
    """
    rows = np.asarray(rows)
    names = class_names(classes, labels)
    counts = class_groups(labels[rows], patients[rows], len(names)) if rows.size else np.zeros(len(names), int)
    cap = int(counts.min())
    if k > cap:
        log.warning("tuner.cv_folds=%d lowered to %d: only %d of the %d %ss outside the test split hold "
                    "class %s, and every fold's validation %ss need %s", k, cap, cap,
                    np.unique(patients[rows]).size, group, names[int(np.argmin(counts))], group, every(names))
        k = cap
    if k < 2:
        return []
    from sklearn.model_selection import StratifiedGroupKFold

    for attempt in range(ATTEMPTS):
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed + attempt * 7919)
        folds = [(rows[a], rows[b]) for a, b in splitter.split(rows, labels[rows], patients[rows])]
        if all(_holds(labels[val], len(names)) for _, val in folds):
            return [(np.sort(train), np.sort(val)) for train, val in folds]
    raise DatasetError(f"could not make {k} {group} folds that each hold {every(names)}; lower tuner.cv_folds")
