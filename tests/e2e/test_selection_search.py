"""Whole searches with patient folds, refit, ensembles and TTA, and one without test patients."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

from histo_exp.model.saving import load_model, read_meta

from helpers import TINY, cli_env, runs, split_parts


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


def test_a_run_without_test_patients_reports_validation_only(run_cli, tmp_path):
    done = run_cli([*TINY, "tuner.max_trials=1", "data.test_fraction=0", "eval.max_maps=1"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no test patients: data.test_fraction=0" in done.stdout + done.stderr
    client, (search,), _ = runs(tmp_path)
    assert "val_auc" in search.data.metrics and not any(k.startswith("test_") for k in search.data.metrics)
    parts = split_parts(client.download_artifacts(search.info.run_id, "split.csv", str(tmp_path)))
    assert set(parts.values()) == {"train", "val"} and len(parts) == 6
