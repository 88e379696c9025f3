"""Helpers shared by the tests: the CLI's environment, the store a run logs to, small hypermodels,
prediction in this process, and the test AUC recomputed from what a run saved."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from mlflow.tracking import MlflowClient

from histo_exp.config import CONFIG_DIR
from histo_exp.launch import free_port  # noqa: F401  (tests start servers on loopback too)
from histo_exp.model.hypermodel import SpaceHyperModel
from histo_exp.tracking import MlflowTracker

REPO = Path(__file__).resolve().parents[1]
IDC_MINI = REPO.parent / "shared" / "data" / "idc-mini"

TINY = ["debug=fast", "tuner.max_trials=2", "data.synthetic.patients=6",
        "data.synthetic.patches_per_patient=40"]


class MlflowServer:
    """A real ``mlflow server`` on loopback, with its store and artifacts in ``folder``; it can be
    killed and started again on the same port and store, as an outage would."""

    def __init__(self, folder: Path, port: int | None = None):
        self.folder = Path(folder)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90) -> MlflowServer:
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
             f"sqlite:///{self.folder}/server.db", "--artifacts-destination", str(self.folder / "artifacts"),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return self
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"the MLflow server did not come up in {timeout_s:.0f} s") from None
                time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the server and its workers by their process group: a crash, not a shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


def tracking_uri(workdir: Path) -> str:
    """The store a run started in ``workdir`` logs to by default (``logger.tracking_uri``)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return str(compose("config", overrides=[f"paths.work_dir={workdir}"]).logger.tracking_uri)
    finally:
        GlobalHydra.instance().clear()


def runs(workdir: Path) -> tuple[MlflowClient, list, list]:
    """The MLflow client of ``workdir``'s store, its search runs and its trial runs."""
    client = MlflowClient(tracking_uri=tracking_uri(workdir))
    exp = client.get_experiment_by_name("histo_exp")
    found = client.search_runs([exp.experiment_id])
    search = [r for r in found if r.data.tags.get("histo_exp.role") == "search"]
    trials = [r for r in found if r.data.tags.get("histo_exp.role") == "trial"]
    return client, search, trials


def cli_env(cache_dir: Path) -> dict[str, str]:
    """The caller's environment for a CLI subprocess, less what would change the run."""
    env = {**os.environ, "HISTO_EXP_CACHE": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    env.pop("PYTEST_CURRENT_TEST", None)
    env.pop("KERAS_BACKEND", None)  # the default backend unless a test sets one
    for name in [n for n in env if n.startswith("KERASTUNER_")]:  # no role from the caller's shell
        env.pop(name)
    return env


def in_trial(args: list[str], cwd: Path, cache_dir: Path, trial_line: str,
             act: Callable[[subprocess.Popen], None]) -> tuple[int, str]:
    """Run the CLI and call ``act`` (send a signal, kill a server) at the first training step after
    ``trial_line``, with epochs still to go: the CLI's exit code and output."""
    proc = subprocess.Popen(args, cwd=cwd, env=cli_env(cache_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 480
    started = False
    for line in proc.stdout:
        lines.append(line)
        started = started or trial_line in line
        if (started and "/step" in line) or time.time() > deadline:
            break
    act(proc)
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, "".join(lines) + out


def hypermodel(model: Mapping, optimizer: Mapping, input_shape: tuple[int, int, int],
               cls: type[SpaceHyperModel] = SpaceHyperModel, **kwargs) -> SpaceHyperModel:
    """A hypermodel from model and optimizer groups (composed or written inline), as the runner makes it."""
    from hydra.utils import instantiate

    model = {"_target_": "histo_exp.model.cnn.build_cnn", **model}
    optimizer = {"_target_": "keras.optimizers.Adam", **optimizer}
    return cls(instantiate(model, _partial_=True, _convert_="all"),
               instantiate(optimizer, _partial_=True, _convert_="all"), input_shape, **kwargs)



def predict(overrides: list[str]) -> Path:
    """``python -m histo_exp.predict`` in this process: the same config (conf/commands/predict.yaml), composed."""
    from histo_exp.predict import predict_files

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR / "commands"), version_base="1.3"):
            cfg = compose("predict", overrides=[f"paths.work_dir={Path.cwd()}", *overrides])
    finally:
        GlobalHydra.instance().clear()
    return predict_files(cfg)


def split_parts(split_csv: str | Path) -> dict[str, str]:
    """patient -> train/val/test, from the split.csv a run writes."""
    rows = Path(split_csv).read_text().splitlines()[1:]
    return {row.split(",")[0]: row.split(",")[1] for row in rows}


def saved_model_test_auc(output_dir: str | Path, data_root: str | Path, batch_size: int = 64) -> float:
    """ROC AUC of the run's saved ``best_model.keras`` on the test patients of its ``split.csv``,
    recomputed here (own decoding, Keras and scikit-learn) rather than read from the run."""
    from sklearn.metrics import roc_auc_score

    from histo_exp.data.decode import decode
    from histo_exp.data.index import index
    from histo_exp.model.saving import load_model

    output_dir = Path(output_dir)
    model, meta = load_model(output_dir / "best_model.keras")
    test = {p for p, part in split_parts(output_dir / "split.csv").items() if part == "test"}
    assert test, "split.csv lists no test patients"
    manifest = index(data_root)
    rows = np.flatnonzero(np.isin(manifest.patients, sorted(test)))
    images = decode(manifest, int(meta["image_size"]), str(meta["color"]), progress=False).images[rows]
    prob = model.predict(images, batch_size=batch_size, verbose=0)[:, 1]
    labels = manifest.labels[rows]
    assert set(np.unique(labels)) == {0, 1}, "the test patients hold one class only"
    return float(roc_auc_score(labels, prob))


def flat_layers(model) -> list:
    """The model's layers, with those of any nested model (input layers in front of the network) in place."""
    import keras

    return [inner for layer in model.layers
            for inner in (flat_layers(layer) if isinstance(layer, keras.Model) else [layer])]


SHAPE = (16, 16, 3)  # the tiny model of the tracker tests (the keras_file fixture)
MLFLOW_CLI = Path(sys.executable).with_name("mlflow")


def tracker(store: Path, **kwargs) -> MlflowTracker:
    """An MLflow tracker on the SQLite store in ``store`` (system metrics off unless asked)."""
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


def expected(keras_file: Path, x: np.ndarray) -> np.ndarray:
    """What the .keras model itself predicts for ``x`` (IDC probabilities)."""
    import keras

    return keras.models.load_model(keras_file, compile=False).predict(x, verbose=0)[:, 1]
