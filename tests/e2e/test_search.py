"""The default command, run once for the session (the golden search, ``conftest.py``), as a user runs it:
from a folder other than the repo, read back from MLflow, its model used by the other commands."""

from __future__ import annotations

import csv
import json
import platform
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

from helpers import cli_env, split_parts


def test_the_console_says_what_the_search_did_and_where_to_look(golden):
    stack = (f"stack: keras {version('keras')} on the tensorflow backend (tensorflow {version('tensorflow')}); "
             f"keras-tuner {version('keras-tuner')}, hydra-core {version('hydra-core')}, mlflow {version('mlflow')}")
    assert golden.output.count(stack) == 1
    for expected in ("trial 0 completed: val_auc=", "best trial", "decision threshold",
                     "test 95% CI (by patient)", "balanced_accuracy", "make ui",
                     "mlflow ui --backend-store-uri sqlite:///"):
        assert expected in golden.output
    assert not (golden.folder / "conf").exists() and Path.cwd() != golden.folder


def test_the_search_run_records_data_model_metrics_machine_and_provenance(golden):
    client, run, trials = golden.client, golden.search, golden.trials
    assert len(trials) == 2
    assert run.info.status == "FINISHED" and run.data.tags["histo_exp.keras_backend"] == "tensorflow"
    assert "best_val_auc" in run.data.metrics
    # What it trained on, the servable model and the machine's load, as MLflow records them.
    [data] = [d.dataset for d in run.inputs.dataset_inputs]
    profile = json.loads(data.profile)
    assert data.name == "synthetic" and profile["train_patients"] + profile["val_patients"] + profile["test_patients"] == 6
    [model] = [m for m in client.search_logged_models([run.info.experiment_id]) if m.source_run_id == run.info.run_id]
    assert model.name == "idc_probability" and str(model.status).endswith("READY")
    assert any(name.startswith("system/cpu") for name in run.data.metrics)
    for split in ("val", "test"):
        for name in ("auc", "pr_auc", "f1", "balanced_accuracy", "sensitivity", "specificity", "accuracy"):
            assert f"{split}_{name}" in run.data.metrics
    m = run.data.metrics
    assert 0 <= m["test_auc_ci_low"] <= m["test_auc_ci_high"] <= 1 and "threshold" in m
    assert 0 <= m["test_f1_ci_low"] <= m["test_f1_ci_high"] <= 1  # docs/evaluation.md; its values: test_evaluation
    assert run.data.tags["histo_exp.version"] and len(run.data.tags["histo_exp.git_commit"]) == 40
    for name in ("tensorflow", "keras", "keras-tuner", "hydra-core", "mlflow", "numpy"):
        assert run.data.tags[f"histo_exp.stack.{name}"] == version(name)
    assert run.data.tags["histo_exp.stack.python"] == platform.python_version()
    environment = Path(client.download_artifacts(run.info.run_id, "environment.txt", str(golden.folder / "env")))
    assert f"keras-tuner=={version('keras-tuner')}" in environment.read_text().lower().replace("_", "-")
    assert run.data.params["optimizer.name"] == "adam" and run.data.params["tuner.max_trials"] == "2"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "roc.png", "pr.png", "confusion.png", "trials.png", "training_curves.png",
            "split.csv", "trials.csv", "model", "maps", "data", "environment.txt"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "data")} == {"data/dataset_card.png",
                                                                                "data/dataset_card.csv"}
    maps = [a.path for a in client.list_artifacts(run.info.run_id, "maps")]
    assert maps and all(p.startswith("maps/9000") and p.endswith(".png") for p in maps)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/best_model.keras"]
    assert max(t.data.metrics["val_auc"] for t in trials) == pytest.approx(run.data.metrics["best_val_auc"])


def test_each_trial_is_a_nested_run_with_its_epochs_and_curves(golden):
    client = golden.client
    for trial in golden.trials:
        assert trial.data.tags["mlflow.parentRunId"] == golden.search.info.run_id
        assert trial.info.status == "FINISHED"
        assert "val_auc" in trial.data.metrics and "learning_rate" in trial.data.params
        assert [a.path for a in client.list_artifacts(trial.info.run_id)] == ["training_curves.png"]
        history = client.get_metric_history(trial.info.run_id, "val_auc")
        # debug=fast: one epoch (step 0), then the trial's score as the last val_auc (docs/mlflow.md)
        assert sorted(m.step for m in history) == [0, 1]
        assert trial.data.metrics["val_auc"] == pytest.approx(max(m.value for m in history))
        # KerasTuner's own record of the trial is the reference for the score the run shows.
        [kept] = golden.folder.glob(f"outputs/*/*/tuner/trial_{trial.data.tags['histo_exp.trial_id']}/trial.json")
        assert trial.data.metrics["val_auc"] == pytest.approx(json.loads(kept.read_text())["score"])
        for name in ("loss", "auc", "val_loss"):
            assert client.get_metric_history(trial.info.run_id, name)


def test_the_split_is_by_patient_and_logged(golden):
    split_csv = golden.client.download_artifacts(golden.search.info.run_id, "split.csv", str(golden.folder / "dl"))
    rows = Path(split_csv).read_text().splitlines()
    assert rows[0] == "patient,split,patches,idc_share" and len(rows) == 1 + 6
    assert {r.split(",")[1] for r in rows[1:]} == {"train", "val", "test"}


def test_the_trials_command_exports_the_search_runs_trials(golden, tmp_path):
    exported = subprocess.run(
        [sys.executable, "-m", "histo_exp.trials", f"source={golden.search.info.run_id}", f"csv={tmp_path}/t.csv"],
        cwd=golden.folder, env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr[-2000:]
    table = (tmp_path / "t.csv").read_text().splitlines()
    assert table[0].startswith("trial,status,val_auc,") and "learning_rate" in table[0]
    assert "system/" not in table[0]  # the machine's metrics are on the trial runs, not in the table
    assert len(table) == 1 + 2 and all(",FINISHED," in row for row in table[1:])


def test_the_run_id_is_enough_to_predict_and_gives_the_logged_test_auc(golden, tmp_path):
    """The model file carries size, colour and threshold; evaluation ran on the test patients of
    split.csv, so the logged model's predictions on exactly those patients give the logged test AUC."""
    run, m = golden.search, golden.search.data.metrics
    predicted = subprocess.run(
        [sys.executable, "-m", "histo_exp.predict", f"model={run.info.run_id}", f"input={run.data.params['data.root']}",
         f"output={tmp_path}/pred.csv"],
        cwd=golden.folder, env=cli_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert f"threshold {m['threshold']:.3f}" in predicted.stderr + predicted.stdout
    split_csv = golden.client.download_artifacts(run.info.run_id, "split.csv", str(tmp_path))
    parts = split_parts(split_csv)
    rows = Path(split_csv).read_text().splitlines()
    with open(tmp_path / "pred.csv") as f:
        table = [r for r in csv.DictReader(f) if parts[r["patient"]] == "test"]
    assert len(table) == sum(int(r.split(",")[2]) for r in rows[1:] if r.split(",")[1] == "test")
    y_true = [int(r["path"].endswith("_class1.png")) for r in table]
    y_prob = [float(r["prob_idc"]) for r in table]
    assert roc_auc_score(y_true, y_prob) == pytest.approx(m["test_auc"], abs=1e-3)
    assert all(r["label"] == str(int(float(r["prob_idc"]) >= m["threshold"])) for r in table)
