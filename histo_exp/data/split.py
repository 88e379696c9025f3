"""Patient-level train/val/test split: no patient's patches in two parts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from histo_exp.data.index import DatasetError

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
    """One fold of about ``fraction`` of the patches, stratified by label, grouped by patient."""
    folds = max(2, round(1.0 / fraction))
    n_groups = len(np.unique(groups))
    if n_groups < folds:
        folds = n_groups
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    rest, held = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return rest, held


def split_by_patient(
    labels: np.ndarray, patients: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> Split:
    """Split by patient, stratified by label as far as the patients allow, deterministically.

    Tries successive seeds until validation and test each hold both classes, because AUC is
    undefined on one class; fails with a clear error when the patients cannot give that.
    """
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < f < 1.0:
            raise DatasetError(f"data.{name} must be between 0 and 1; got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise DatasetError("data.val_fraction + data.test_fraction must leave patches to train on")
    classes = np.unique(labels)
    if classes.size < 2:
        raise DatasetError(
            f"all {labels.size} patches are class {int(classes[0])}: a classifier needs both "
            "class 0 and class 1 patches"
        )
    unique = np.unique(patients)
    if unique.size < 3:
        raise DatasetError(
            f"found {unique.size} patient(s) ({', '.join(map(str, unique))}); a patient-level "
            "train/val/test split needs at least 3 patients"
        )
    for attempt in range(ATTEMPTS):
        s = seed + attempt * 7919
        rest, test = _hold_out(labels, patients, test_fraction, s)
        inner, val = _hold_out(labels[rest], patients[rest], val_fraction / (1 - test_fraction), s)
        parts = Split(train=rest[inner], val=rest[val], test=test)
        if all(np.unique(labels[getattr(parts, p)]).size == 2 for p in PARTS):
            return Split(*(np.sort(getattr(parts, p)) for p in PARTS))
    mixed = sorted({str(p) for p in unique if np.unique(labels[patients == p]).size == 2})
    raise DatasetError(
        f"could not split {unique.size} patients so that train, val and test each hold both "
        f"classes (patients holding both: {mixed or 'none'}); add patients or change "
        "data.val_fraction / data.test_fraction"
    )
