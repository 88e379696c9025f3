"""The real CLI in a subprocess, from a folder other than the repo, read back from MLflow."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

from helpers import IDC_MINI, REPO, TINY, cli_env, runs, split_parts

pytestmark = pytest.mark.slow


def test_default_command_logs_a_search_with_its_trials(run_cli, tmp_path):
    assert Path.cwd() != tmp_path and not (tmp_path / "conf").exists()
    done = run_cli(TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    for expected in ("trial 0 completed: val_auc=", "best trial", "decision threshold",
                     "test 95% CI (by patient)", "balanced_accuracy", "make ui",
                     "mlflow ui --backend-store-uri sqlite:///"):
        assert expected in out
    client, search, trials = runs(tmp_path)
    assert len(search) == 1 and len(trials) == 2
    run = search[0]
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
    assert run.data.tags["histo_exp.version"] and len(run.data.tags["histo_exp.git_commit"]) == 40
    assert run.data.params["optimizer.name"] == "adam" and run.data.params["tuner.max_trials"] == "2"
    for trial in trials:
        assert trial.data.tags["mlflow.parentRunId"] == run.info.run_id
        assert trial.info.status == "FINISHED"
        assert "val_auc" in trial.data.metrics and "learning_rate" in trial.data.params
        assert [a.path for a in client.list_artifacts(trial.info.run_id)] == ["training_curves.png"]
        history = client.get_metric_history(trial.info.run_id, "val_auc")
        assert {m.step for m in history} >= {0}
        assert trial.data.metrics["val_auc"] == pytest.approx(max(m.value for m in history))
        for name in ("loss", "auc", "val_loss"):
            assert client.get_metric_history(trial.info.run_id, name)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "roc.png", "pr.png", "confusion.png", "trials.png", "training_curves.png",
            "split.csv", "trials.csv", "model", "maps"} <= artifacts
    exported = subprocess.run(
        [sys.executable, "-m", "histo_exp.trials", f"source={run.info.run_id}", "csv=t.csv"],
        cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr[-2000:]
    table = (tmp_path / "t.csv").read_text().splitlines()
    assert table[0].startswith("trial,status,val_auc,") and "learning_rate" in table[0]
    assert "system/" not in table[0]  # the machine's metrics are on the trial runs, not in the table
    assert len(table) == 1 + 2 and all(",FINISHED," in row for row in table[1:])
    maps = [a.path for a in client.list_artifacts(run.info.run_id, "maps")]
    assert maps and all(p.startswith("maps/9000") and p.endswith(".png") for p in maps)
    split_csv = client.download_artifacts(run.info.run_id, "split.csv", str(tmp_path))
    rows = Path(split_csv).read_text().splitlines()
    assert rows[0] == "patient,split,patches,idc_share" and len(rows) == 1 + 6
    assert {r.split(",")[1] for r in rows[1:]} == {"train", "val", "test"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/best_model.keras"]
    assert max(t.data.metrics["val_auc"] for t in trials) == pytest.approx(run.data.metrics["best_val_auc"])

    # The run id is enough to predict: the model file carries size, colour and threshold.
    root = run.data.params["data.root"]
    predicted = subprocess.run(
        [sys.executable, "-m", "histo_exp.predict", f"model={run.info.run_id}", f"input={root}",
         "output=pred.csv"],
        cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=600,
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert f"threshold {m['threshold']:.3f}" in predicted.stderr + predicted.stdout
    # Evaluation ran on the test patients of split.csv: the logged model's predictions on exactly
    # those patients give the logged test AUC, and its labels follow the logged threshold.
    parts = split_parts(split_csv)
    with open(tmp_path / "pred.csv") as f:
        table = [r for r in csv.DictReader(f) if parts[r["patient"]] == "test"]
    assert len(table) == sum(int(r.split(",")[2]) for r in rows[1:] if r.split(",")[1] == "test")
    y_true = [int(r["path"].endswith("_class1.png")) for r in table]
    y_prob = [float(r["prob_idc"]) for r in table]
    assert roc_auc_score(y_true, y_prob) == pytest.approx(m["test_auc"], abs=1e-3)
    assert all(r["label"] == str(int(float(r["prob_idc"]) >= m["threshold"])) for r in table)


@pytest.mark.parametrize("launcher", ["basic", "joblib", "ray"])
def test_multirun_of_the_three_optimizers_gives_three_searches(run_cli, tmp_path, launcher):
    """joblib and ray run the jobs in parallel processes on one SQLite store: no lock errors, no lost run."""
    done = run_cli(["-m", f"hydra/launcher={launcher}", "optimizer=adam,rmsprop,sgd", *TINY,
                    "tuner.max_trials=1"], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _, search, trials = runs(tmp_path)
    assert sorted(r.data.params["optimizer.name"] for r in search) == ["adam", "rmsprop", "sgd"]
    assert all(r.info.status == "FINISHED" for r in search) and len(trials) == 3
    assert len(list((tmp_path / "multirun").glob("*/*/*/best_model.keras"))) == 3
    assert "database is locked" not in done.stderr + done.stdout


@pytest.mark.parametrize("args, message", [
    (["optimizer=adamw"], "Available options"),
    (["data=idc"], "data.root is not set"),
    (["data=idc", "data.root=/no/such/folder"], "'/no/such/folder' does not exist"),
])
def test_bad_input_fails_with_a_clear_message(run_cli, tmp_path, args, message):
    done = run_cli(args)
    assert done.returncode != 0
    assert message in done.stderr + done.stdout
    if args[0].startswith("optimizer"):  # the config does not compose: Hydra makes no run folder
        assert list(tmp_path.iterdir()) == []
        return
    # The data are loaded before the tracking store is opened: nothing half-logged, no empty store.
    # Hydra has made the run folder (its config and log) and nothing else is in it.
    assert [p.name for p in tmp_path.iterdir()] == ["outputs"]
    [run_dir] = tmp_path.glob("outputs/*/*")
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "__main__.log"]


def test_runs_on_jax_where_tensorflow_is_not_installed(tmp_path, cache_dir):
    """A GPU machine with jax and no TensorFlow: the search, its tracking and prediction never import
    TensorFlow, and histo_exp picks the jax backend by itself. As on a GPU, the cache is held in
    device memory (the CPU device here) and two threads gather batches there."""
    pytest.importorskip("jax", reason="jax is not installed (pip install -e '.[jax]')")
    without_tf = [sys.executable, str(Path(__file__).with_name("without_tensorflow.py"))]
    done = subprocess.run([*without_tf, "histo_exp", *TINY, "tuner.max_trials=1", "hydra.run.dir=out",
                           "trainer.data_on_device=true", "trainer.loader_workers=2"],
                          cwd=tmp_path, env=cli_env(cache_dir), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on the jax backend" in done.stdout + done.stderr
    assert "uint8 cache in CPU memory: batches are gathered there" in done.stdout + done.stderr
    _, search, trials = runs(tmp_path)
    assert search[0].info.status == "FINISHED" and len(trials) == 1
    assert search[0].data.tags["histo_exp.keras_backend"] == "jax"
    patch = next(cache_dir.rglob("*.png"))
    predicted = subprocess.run([*without_tf, "histo_exp.predict", "model=out/best_model.keras", f"input={patch}",
                                "output=p.csv"], cwd=tmp_path, env=cli_env(cache_dir), capture_output=True,
                               text=True, timeout=600)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert (tmp_path / "p.csv").read_text().count("\n") == 2


@pytest.mark.skipif(not IDC_MINI.is_dir(), reason=f"the real IDC sample is absent ({IDC_MINI})")
def test_real_idc_sample_beats_chance(run_cli, tmp_path):
    done = run_cli([
        "data=idc", f"data.root={IDC_MINI}", "data.image_size=32", "tuner.max_trials=2",
        "trainer.epochs=2", "model.blocks=2", "model.filters=16", "trainer.verbose=2",
    ], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _, search, trials = runs(tmp_path)
    assert len(search) == 1 and len(trials) == 2
    assert search[0].data.metrics["best_val_auc"] > 0.6
    assert search[0].data.metrics["test_auc"] > 0.5


def test_the_module_runs_when_installed_outside_the_repo(tmp_path):
    """Hydra's config_path trap: a wheel install must find its configs from any folder."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                    "-q", "--target", str(target), str(REPO)], check=True, capture_output=True)
    assert not (target / "histo_exp" / "conf").is_symlink()
    done = subprocess.run(
        [sys.executable, "-m", "histo_exp", "--cfg", "job", "data=idc"],
        cwd=tmp_path, env={**cli_env(tmp_path), "PYTHONPATH": str(target)},
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "keras.optimizers.Adam" in done.stdout
    assert "max_trials: 3" in done.stdout and "min: 0.0005" in done.stdout  # data=idc's preset, nested folder too
