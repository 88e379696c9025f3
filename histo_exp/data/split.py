"""Patient-level train/val/test split: no patient's patches in two parts."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histo_exp.data.index import DatasetError

log = logging.getLogger(__name__)

PARTS = ("train", "val", "test")
ATTEMPTS = 50


@dataclass
class Split:
    """Indices of each part into the patch arrays, and the patient each part holds."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def patients(self, patients: np.ndarray) -> dict[str, str]:
        """Patient id -> part name, for the split CSV."""
        return {str(p): part for part in PARTS for p in np.unique(patients[getattr(self, part)])}


def _hold_out(labels, groups, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One fold of about ``fraction`` of the patches, stratified by label, grouped by patient.

    The first of the splitter's folds whose held-out part holds both classes (else its first fold).
    """
    from sklearn.model_selection import StratifiedGroupKFold  # a second of import: only when a split is made

    folds = max(2, round(1.0 / fraction))
    n_groups = len(np.unique(groups))
    if n_groups < folds:
        folds = n_groups
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    candidates = list(splitter.split(np.zeros(len(labels)), labels, groups))
    return next(((rest, held) for rest, held in candidates if np.unique(labels[held]).size == 2), candidates[0])


def check_splittable(labels: np.ndarray, patients: np.ndarray, val_fraction: float, test_fraction: float) -> None:
    """The fractions, both classes and enough patients: checked on file names before any decoding."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"data.val_fraction must be between 0 and 1; got {val_fraction}")
    if not 0.0 <= test_fraction < 1.0:
        raise DatasetError(f"data.test_fraction must be at least 0 and below 1; got {test_fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise DatasetError("data.val_fraction + data.test_fraction must leave patches to train on")
    classes = np.unique(labels)
    if classes.size < 2:
        raise DatasetError(
            f"all {labels.size} patches are class {int(classes[0])}: a classifier needs both "
            "class 0 and class 1 patches"
        )
    unique = np.unique(patients)
    needed = 3 if test_fraction else 2
    if unique.size < needed:
        raise DatasetError(
            f"found {unique.size} patient(s) ({', '.join(map(str, unique))}); a patient-level "
            f"split needs at least {needed} patients"
        )


def split_by_patient(
    labels: np.ndarray, patients: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> Split:
    """Split by patient, stratified by label as far as the patients allow, deterministically.

    Tries successive seeds until validation and test each hold both classes, because AUC is
    undefined on one class; fails with a clear error when the patients cannot give that.
    ``test_fraction=0`` holds out no test patients (they live elsewhere, e.g. a leave-patients-out
    benchmark that predicts them with ``histo_exp.predict``).
    """
    check_splittable(labels, patients, val_fraction, test_fraction)
    unique = np.unique(patients)
    parts_needed = PARTS if test_fraction else PARTS[:2]
    for attempt in range(ATTEMPTS):
        s = seed + attempt * 7919
        if test_fraction:
            rest, test = _hold_out(labels, patients, test_fraction, s)
        else:
            rest, test = np.arange(labels.size), np.array([], dtype=int)
        inner, val = _hold_out(labels[rest], patients[rest], val_fraction / (1 - test_fraction), s)
        parts = Split(train=rest[inner], val=rest[val], test=test)
        if all(np.unique(labels[getattr(parts, p)]).size == 2 for p in parts_needed):
            return Split(*(np.sort(getattr(parts, p)) for p in PARTS))
    mixed = sorted({str(p) for p in unique if np.unique(labels[patients == p]).size == 2})
    raise DatasetError(
        f"could not split {unique.size} patients so that {', '.join(parts_needed)} each hold both "
        f"classes (patients holding both: {mixed or 'none'}); add patients or change "
        "data.val_fraction / data.test_fraction"
    )


def split_once(folder: Path, kept: np.ndarray, labels: np.ndarray, patients: np.ndarray, val_fraction: float,
               test_fraction: float, seed: int) -> Split:
    """``split_by_patient`` of the ``kept`` rows, made once per cache and settings and saved in the
    cache ``folder``: a run on a cached dataset then reads it (and imports no scikit-learn)."""
    path = folder / f"split-val{val_fraction:g}-test{test_fraction:g}-seed{seed}.npz"
    try:
        with np.load(path) as saved:
            return Split(*(saved[part] for part in PARTS))
    except (OSError, KeyError, ValueError):
        pass
    inner = split_by_patient(labels[kept], patients[kept], val_fraction, test_fraction, seed)
    split = Split(*(kept[getattr(inner, part)] for part in PARTS))
    partial = folder / f".{path.stem}.{os.getpid()}.npz"
    try:
        np.savez(partial, **{part: getattr(split, part) for part in PARTS})
        partial.replace(path)
    except OSError as err:  # a read-only cache: split again next time
        log.debug("could not keep the split in %s (%s)", folder, err)
    return split


def max_folds(labels: np.ndarray, patients: np.ndarray) -> int:
    """How many patient-grouped folds can each hold both classes: the patients holding the rarer one.

    A patient holding both classes counts for both.
    """
    return int(min((np.unique(patients[labels == c]).size for c in (0, 1)), default=0))


def patient_folds(labels: np.ndarray, patients: np.ndarray, rows: np.ndarray, k: int,
                  seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K patient-grouped, label-stratified (train rows, validation rows) folds of ``rows``.

    Every validation fold holds both classes (AUC needs them), so ``k`` is capped by the
    patients that hold the rarer class, with a warning, never an error; 1 fold means no CV.
    """
    rows = np.asarray(rows)
    cap = max_folds(labels[rows], patients[rows])
    if k > cap:
        log.warning("tuner.cv_folds=%d lowered to %d: only %d of the %d patients outside the test "
                    "split hold class %d, and every fold's validation patients need both classes",
                    k, cap, cap, np.unique(patients[rows]).size,
                    int(np.argmin([np.unique(patients[rows][labels[rows] == c]).size for c in (0, 1)])))
        k = cap
    if k < 2:
        return []
    from sklearn.model_selection import StratifiedGroupKFold

    for attempt in range(ATTEMPTS):
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed + attempt * 7919)
        folds = [(rows[a], rows[b]) for a, b in splitter.split(rows, labels[rows], patients[rows])]
        if all(np.unique(labels[val]).size == 2 for _, val in folds):
            return [(np.sort(train), np.sort(val)) for train, val in folds]
    raise DatasetError(f"could not make {k} patient folds that each hold both classes; lower tuner.cv_folds")
