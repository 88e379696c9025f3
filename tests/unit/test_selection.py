"""Patient-grouped CV folds, the rows a refit trains on, and the folds a tuner can use."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from histo_exp.data.split import Split, max_folds, patient_folds
from histo_exp.tuning.final_model import refit_rows


def cohort() -> tuple[np.ndarray, np.ndarray]:
    """9 patients x 20 patches; only patients 0, 1 and 2 hold class 0 (like idc-mini)."""
    patients = np.repeat(np.arange(9), 20)
    labels = np.ones(patients.size, dtype=int)
    labels[(patients < 3) & (np.arange(patients.size) % 20 < 12)] = 0
    return labels, patients


def test_cv_folds_never_share_a_patient_and_keep_test_patients_out():
    labels, patients = cohort()
    test = np.flatnonzero(np.isin(patients, [2, 8]))
    rows = np.setdiff1d(np.arange(patients.size), test)
    folds = patient_folds(labels, patients, rows, 2, seed=0)
    assert len(folds) == 2
    vals = [set(patients[val]) for _, val in folds]
    assert not vals[0] & vals[1] and vals[0] | vals[1] == set(patients[rows])
    for train, val in folds:
        assert not set(patients[train]) & set(patients[val])
        assert not (set(train) | set(val)) & set(test)
        assert np.array_equal(np.sort(np.concatenate([train, val])), rows)
        assert set(labels[val]) == {0, 1}  # AUC needs both classes in every fold


def test_cv_folds_are_capped_by_the_patients_holding_the_rarer_class(caplog):
    labels, patients = cohort()
    rows = np.flatnonzero(patients != 2)  # two class-0 patients left
    assert max_folds(labels[rows], patients[rows]) == 2
    with caplog.at_level(logging.WARNING):
        folds = patient_folds(labels, patients, rows, 5, seed=0)
    assert len(folds) == 2 and "tuner.cv_folds=5 lowered to 2" in caplog.text
    one = np.flatnonzero(patients > 1)  # one class-0 patient: no cross-validation, no crash
    assert patient_folds(labels, patients, one, 3, seed=0) == []


def test_refit_trains_on_the_non_test_patients_or_on_all():
    class Data:
        split = Split(train=np.array([0, 1, 5]), val=np.array([2, 7]), test=np.array([3, 4]))

    assert refit_rows(Data, "trainval").tolist() == [0, 1, 2, 5, 7]
    assert refit_rows(Data, "all").tolist() == [0, 1, 2, 3, 4, 5, 7]


def test_hyperband_refuses_patient_folds(compose_cfg):
    """Hyperband resumes trials from earlier trials' weights: across folds that would leak patients."""
    from histo_exp.errors import UsageError
    from histo_exp.settings import load

    with pytest.raises(UsageError, match="tuner=hyperband .* tuner.cv_folds"):
        load(compose_cfg("tuner=hyperband", "debug=fast", "tuner.cv_folds=2"))


def test_cv_folds_auto_cross_validates_few_patients_only(compose_cfg, tiny_root, tmp_path):
    from histo_exp.build import cv_folds
    from histo_exp.data.dataset import load
    from histo_exp.settings import load as load_settings

    cfg = compose_cfg("data=idc", f"data.root={tiny_root}", "tuner.cv_folds=auto", "tuner.cv_auto_folds=2")
    data = load(cfg.data, progress=False)
    folds = cv_folds(load_settings(cfg), data)
    assert len(folds) == 2  # 4 non-test patients: few
    non_test = set(data.patients[data.split.train]) | set(data.patients[data.split.val])
    assert set().union(*(set(data.patients[val.indices]) for _, val in folds)) == non_test
    cfg.tuner.cv_auto_max_patients = 3
    assert cv_folds(load_settings(cfg), data) == []  # more patients than that: the one validation split
