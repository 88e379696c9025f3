"""A real MLflow tracking server on loopback: a search logs to it over HTTP; its REST API sees it."""

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import cli_env

pytestmark = pytest.mark.slow
MLFLOW = Path(sys.executable).with_name("mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def server(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("the MLflow server did not come up in 90 s")
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_search_logs_to_a_tracking_server(server, tmp_path, cache_dir):
    done = subprocess.run(
        [sys.executable, "-m", "histo_exp", "debug=fast", "tuner.max_trials=2", "eval.bootstrap=50",
         "data.synthetic.patients=6", "data.synthetic.patches_per_patient=40",
         f"logger.tracking_uri={server}"],
        cwd=tmp_path, env=cli_env(cache_dir), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"MLflow UI: {server}" in done.stdout + done.stderr
    exp = api(server, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=histo_exp")["experiment"]
    runs = api(server, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    role = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs}
    search = [rid for rid, tags in role.items() if tags.get("histo_exp.role") == "search"]
    trials = [rid for rid, tags in role.items() if tags.get("histo_exp.role") == "trial"]
    assert len(search) == 1 and len(trials) == 2
    assert all(role[t]["mlflow.parentRunId"] == search[0] for t in trials)
    files = api(server, f"/api/2.0/mlflow/artifacts/list?run_id={search[0]}")["files"]
    assert {"model", "roc.png", "maps"} <= {f["path"] for f in files}
    assert not (tmp_path / "mlruns").exists()  # nothing went to a local store
