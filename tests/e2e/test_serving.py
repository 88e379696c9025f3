"""``mlflow models serve`` on a logged model answers with IDC probabilities."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from histo_exp.tracking import MlflowTracker

from helpers import free_port, predict

SHAPE = (16, 16, 3)


MLFLOW_CLI = Path(sys.executable).with_name("mlflow")


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory) -> Path:
    """A tiny two-class Keras model saved as .keras."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="softmax")])
    path = tmp_path_factory.mktemp("model") / "best_model.keras"
    model.save(path)
    return path


@pytest.fixture
def patches() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (5, *SHAPE), dtype=np.uint8)


def expected(keras_file: Path, x: np.ndarray) -> np.ndarray:
    return keras.models.load_model(keras_file, compile=False).predict(x, verbose=0)[:, 1]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One SQLite store for the module: creating its tables takes a second or two."""
    return tmp_path_factory.mktemp("mlruns")


def tracker(store: Path, **kwargs) -> MlflowTracker:
    kwargs.setdefault("system_metrics", False)
    return MlflowTracker(f"sqlite:///{store}/mlflow.db", "histo_exp",
                         artifact_location=str(store / "artifacts"), **kwargs)


def search_with_model(store: Path, keras_file: Path, **kwargs) -> tuple[MlflowTracker, str]:
    """A search run with the .keras artifact (as the runner logs it) and the pyfunc model."""
    t = tracker(store, **kwargs)
    t.start_search({"seed": 1}, "seed: 1\n", run_name="search")
    t.log_artifact(keras_file, "model")
    uri = t.log_model(keras_file, SHAPE)
    return t, uri


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def stop(server: subprocess.Popen) -> None:
    """End the server and the workers it started (its own process group)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, None)):
        if server.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=wait)


@pytest.mark.timeout(240)
def test_mlflow_models_serve_returns_idc_probabilities(store, tmp_path, keras_file, patches):
    t, uri = search_with_model(store, keras_file)
    t.end_search("FINISHED")
    port = free_port()
    # --env-manager local runs `uvicorn` from PATH: the venv's, as in an activated venv.
    env = {**os.environ, "MLFLOW_TRACKING_URI": t.tracking_uri,
           "PATH": f"{MLFLOW_CLI.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(MLFLOW_CLI), "models", "serve", "-m", uri, "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not answers(f"http://127.0.0.1:{port}/ping"):
            assert server.poll() is None, f"mlflow models serve exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping within 120 s"
            time.sleep(0.5)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=json.dumps({"inputs": patches.tolist()}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            predictions = np.asarray(json.load(reply)["predictions"])
    finally:
        stop(server)
    assert predictions.shape == (len(patches),)
    np.testing.assert_allclose(predictions, expected(keras_file, patches), atol=1e-5)
    # The same patches as PNG files through `python -m histo_exp.predict`: the same answers.
    folder = tmp_path / "tree" / "p1" / "1"
    folder.mkdir(parents=True)
    for i, patch in enumerate(patches):
        cv2.imwrite(str(folder / f"p1_idx5_x{50 * i}_y0_class1.png"), cv2.cvtColor(patch, cv2.COLOR_RGB2BGR))
    with predict([f"model={keras_file}", f"input={tmp_path / 'tree'}", f"output={tmp_path}/p.csv"]).open() as f:
        table = sorted(csv.DictReader(f), key=lambda row: int(row["x"]))
    np.testing.assert_allclose([float(row["prob_idc"]) for row in table], predictions, atol=2e-6)
