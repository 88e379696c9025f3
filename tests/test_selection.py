"""Model selection on patients: patient-grouped CV folds, refit, ensembles, TTA, and runs without a test split."""

from __future__ import annotations

import csv
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY, cli_env, runs, split_parts
from histo_exp.data.split import Split, max_folds, patient_folds
from histo_exp.model.saving import load_model, read_meta
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


@pytest.mark.slow
def test_cv_refit_ensemble_and_tta_give_one_model_that_predicts(run_cli, tmp_path):
    done = run_cli([*TINY, "tuner.cv_folds=2", "trainer.refit=trainval", "eval.ensemble=2", "eval.tta=true",
                    "data.augment.hed=0.05", "data.color=gray", "eval.bootstrap=20", "eval.max_maps=1"])
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    client, (search,), trials = runs(tmp_path)
    for trial in trials:  # each fold's AUC on the trial run; the trial's score is their mean
        m = trial.data.metrics
        assert m["val_auc"] == pytest.approx((m["fold0_val_auc"] + m["fold1_val_auc"]) / 2)
        assert client.get_metric_history(trial.info.run_id, "fold1/val_auc")
    parts = split_parts(client.download_artifacts(search.info.run_id, "split.csv", str(tmp_path)))
    non_test = sum(part != "test" for part in parts.values())
    refits = re.findall(r"refit trial \S+ on \d+ patches of (\d+) patients", out)
    assert len(refits) == 2 and {int(n) for n in refits} == {non_test}
    kept = search.data.tags["histo_exp.kept"]
    assert "refit on every non-test patient" in kept and "test-time augmentation" in kept
    model_file = Path(client.download_artifacts(search.info.run_id, "model/best_model.keras", str(tmp_path)))
    meta = read_meta(model_file)
    assert meta["tta"] is True and meta["color"] == "rgb" and meta["network_color"] == "gray"
    model, _ = load_model(model_file)
    assert model.input_shape[-1] == 3  # the saved model takes the RGB patches; gray is inside it
    root = search.data.params["data.root"]
    predicted = subprocess.run(
        [sys.executable, "-m", "histo_exp.predict", f"model={model_file}", f"input={root}", "output=p.csv"],
        cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    with (tmp_path / "p.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 * 40 and all(0.0 <= float(r["prob_idc"]) <= 1.0 for r in rows)


@pytest.mark.slow
def test_a_run_without_test_patients_reports_validation_only(run_cli, tmp_path):
    done = run_cli([*TINY, "tuner.max_trials=1", "data.test_fraction=0", "eval.max_maps=1"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no test patients: data.test_fraction=0" in done.stdout + done.stderr
    client, (search,), _ = runs(tmp_path)
    assert "val_auc" in search.data.metrics and not any(k.startswith("test_") for k in search.data.metrics)
    parts = split_parts(client.download_artifacts(search.info.run_id, "split.csv", str(tmp_path)))
    assert set(parts.values()) == {"train", "val"} and len(parts) == 6


def test_hyperband_refuses_patient_folds(compose_cfg):
    """Hyperband resumes trials from earlier trials' weights: across folds that would leak patients."""
    from histo_exp.errors import UsageError
    from histo_exp.settings import load

    with pytest.raises(UsageError, match="tuner=hyperband .* tuner.cv_folds"):
        load(compose_cfg("tuner=hyperband", "debug=fast", "tuner.cv_folds=2"))


def test_cv_folds_auto_cross_validates_few_patients_only(compose_cfg, tiny_root, tmp_path):
    from histo_exp.data.dataset import load
    from histo_exp.build import cv_folds
    from histo_exp.settings import load as load_settings

    cfg = compose_cfg("data=idc", f"data.root={tiny_root}", "tuner.cv_folds=auto", "tuner.cv_auto_folds=2")
    data = load(cfg.data, progress=False)
    folds = cv_folds(load_settings(cfg), data)
    assert len(folds) == 2  # 4 non-test patients: few
    non_test = set(data.patients[data.split.train]) | set(data.patients[data.split.val])
    assert set().union(*(set(data.patients[val.indices]) for _, val in folds)) == non_test
    cfg.tuner.cv_auto_max_patients = 3
    assert cv_folds(load_settings(cfg), data) == []  # more patients than that: the one validation split
