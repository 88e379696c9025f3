"""``mlflow models serve`` on a logged model answers with IDC probabilities."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import time
import urllib.request

import cv2
import numpy as np
import pytest

from helpers import MLFLOW_CLI, expected, free_port, predict, search_with_model


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
