"""Three classes end to end: a search through the CLI, its metrics per class, predict's CSV and the served model."""

from __future__ import annotations

import csv
import subprocess
import sys

import mlflow
import numpy as np

from histo_exp.tracking.base import MODEL_NAME

from helpers import cli_env, runs, tracking_uri


def test_a_three_class_search_predicts_and_serves_each_class(run_cli, tmp_path, cache_dir):
    done = run_cli(["debug=fast", "data.synthetic.classes=3", "tuner.max_trials=2", "trainer.epochs=2",
                    f"hydra.run.dir={tmp_path}/run"])
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout + done.stderr
    assert "decision: the most probable of 3 classes" in said
    _, search, trials = runs(tmp_path)
    metrics = search[0].data.metrics
    assert len(trials) == 2 and search[0].info.status == "FINISHED"
    assert metrics["test_auc"] >= 0.8  # the wiring, not the quality: nested bands a small CNN learns at once
    assert {f"test_auc_class {k}" for k in range(3)} <= set(metrics)
    header = (tmp_path / "run" / "split.csv").read_text().splitlines()[0]
    assert header == "patient,split,patches,n_class 0,n_class 1,n_class 2"

    images = cache_dir / "synthetic" / "seed42_p20_n60_c3" / "class 2"
    out = tmp_path / "p.csv"
    predicted = subprocess.run([sys.executable, "-m", "histo_exp.predict", f"model={tmp_path}/run/best_model.keras",
                                f"input={images}", f"output={out}"], cwd=tmp_path, env=cli_env(cache_dir),
                               capture_output=True, text=True, timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "patient", "x", "y", "prob_class 0", "prob_class 1", "prob_class 2", "label", "error"]
    probs = np.array([[float(v) for v in row[4:7]] for row in rows[1:]])
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert {row[7] for row in rows[1:]} <= {"class 0", "class 1", "class 2"}

    mlflow.set_tracking_uri(tracking_uri(tmp_path))
    served = mlflow.pyfunc.load_model(f"runs:/{search[0].info.run_id}/{MODEL_NAME}")
    batch = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    assert np.asarray(served.predict(batch)).shape == (4, 3)
