"""The MLflow tracker against a real SQLite store: datasets, pyfunc model, registry, system metrics."""

from __future__ import annotations

import errno
import inspect
import json
import os
import signal
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from mlflow.entities import LoggedModelStatus

from histo_exp.tracking import (
    CHAMPION,
    MODEL_NAME,
    MlflowTracker,
    NullTracker,
    Tracker,
    download_model,
    ending_runs,
    writes,
)

from helpers import SHAPE, expected, search_with_model, tracker


def test_null_tracker_has_every_method_of_tracker():
    public = {n: f for n, f in inspect.getmembers(Tracker, inspect.isfunction) if not n.startswith("_")}
    assert {"log_dataset", "log_model", "register", "end_search"} <= public.keys()
    null = NullTracker()
    for name, func in public.items():
        assert inspect.signature(getattr(NullTracker, name)) == inspect.signature(func), name
    for name, func in inspect.getmembers(MlflowTracker, inspect.isfunction):
        if not name.startswith("_"):
            assert name in public, f"MlflowTracker.{name} is not part of Tracker"
            assert inspect.signature(func) == inspect.signature(public[name]), name
    assert null.log_model(Path("x.keras"), SHAPE) is None and null.register(0.9, "fp") is None
    assert null.is_running("r") is False and "off" in null.describe()


def test_params_over_a_batch_and_over_the_length_limit_are_logged(store):
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    t = tracker(store)
    params = {f"p{i}": i for i in range(250)} | {"long": "x" * (MAX_PARAM_VAL_LENGTH + 10)}
    t.start_search(params, "", run_name="search")
    logged = t.client.get_run(t.search_run_id).data.params
    assert len(logged) == 251 and len(logged["long"]) == MAX_PARAM_VAL_LENGTH


def test_log_dataset_is_a_run_input_once_per_run(store):
    t = tracker(store)
    t.start_search({}, "", run_name="search")
    profile = {"train_patches": 120, "train_patients": 3, "val_patches": 40, "val_patients": 1}
    t.log_dataset("idc", "0123456789abcdef", "/data/IDC", profile)
    t.end_search("KILLED")
    again = tracker(store)  # a resumed search logs the same data again
    again.start_search({}, "", run_name="search", resume=t.search_run_id)
    again.log_dataset("idc", "0123456789abcdef", "/data/IDC", profile)
    again.end_search("FINISHED")
    inputs = t.client.get_run(t.search_run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    (found,) = inputs
    assert (found.dataset.name, found.dataset.digest) == ("idc", "0123456789abcdef")
    assert json.loads(found.dataset.profile) == profile
    assert json.loads(found.dataset.source) == {"uri": "/data/IDC"}
    assert {(tag.key, tag.value) for tag in found.tags} == {("mlflow.data.context", "training")}


def test_log_model_is_a_logged_model_of_the_search_run(store, tmp_path, keras_file, patches, monkeypatch):
    import mlflow
    import mlflow.pyfunc

    t, uri = search_with_model(store, keras_file)
    t.end_search("FINISHED")
    assert uri == f"models:/{t.model_id}"
    model = t.client.get_logged_model(t.model_id)
    assert (model.name, model.source_run_id) == (MODEL_NAME, t.search_run_id)
    assert model.status == LoggedModelStatus.READY
    run = t.client.get_run(t.search_run_id)
    assert [o.model_id for o in run.outputs.model_outputs] == [t.model_id]
    assert run.info.status == "FINISHED" and mlflow.active_run() is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", t.tracking_uri)
    for ref in (uri, f"runs:/{t.search_run_id}/{MODEL_NAME}"):
        prob = mlflow.pyfunc.load_model(ref).predict(patches)
        assert prob.dtype == np.float32 and prob.shape == (len(patches),)
        np.testing.assert_allclose(prob, expected(keras_file, patches), atol=1e-6)
    # The run's own artifact, as predict fetches it by run id, is still there.
    got = download_model(t.search_run_id, t.tracking_uri, tmp_path / "by_run")
    assert got.name == "best_model.keras" and got.read_bytes() == keras_file.read_bytes()


def test_register_moves_champion_on_better_val_auc_within_the_data(store, tmp_path, keras_file, patches,
                                                                    monkeypatch):
    import mlflow.pyfunc

    name = "histo_exp-idc-champion"
    aliases = []
    for val_auc, fingerprint in [(0.8, "fpA"), (0.7, "fpA"), (0.9, "fpA"), (0.5, "fpB"), (0.85, "fpA")]:
        t, _ = search_with_model(store, keras_file, register_model=True, registered_model_name=name)
        version = t.register(val_auc, fingerprint)
        t.end_search("FINISHED")
        mv = t.client.get_model_version(name, version)
        assert mv.tags == {"histo_exp.val_auc": repr(val_auc), "histo_exp.data_fingerprint": fingerprint}
        logged = t.client.get_logged_model(t.model_id)
        assert (mv.run_id, mv.source) == (t.search_run_id, logged.artifact_location)
        assert [str(v["version"]) for v in json.loads(logged.tags["mlflow.modelVersions"])] == [version]
        aliases.append(str(t.client.get_model_version_by_alias(name, CHAMPION).version))
    # Same data: the best AUC; new data: its best version, since AUCs on other data do not compare.
    assert aliases == ["1", "1", "3", "4", "3"]
    path = download_model(f"models:/{name}@{CHAMPION}", t.tracking_uri, tmp_path / "champion")
    assert path.suffix == ".keras"
    np.testing.assert_allclose(keras.models.load_model(path, compile=False).predict(patches, verbose=0)[:, 1],
                               expected(keras_file, patches), atol=1e-6)
    assert download_model(f"models:/{name}/2", t.tracking_uri, tmp_path / "v2").is_file()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", t.tracking_uri)  # how `mlflow models serve` finds the registry
    np.testing.assert_allclose(mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}").predict(patches),
                               expected(keras_file, patches), atol=1e-6)


def test_register_is_off_unless_asked(store, keras_file):
    t, _ = search_with_model(store, keras_file, registered_model_name="histo_exp-off")
    assert t.register(0.9, "fp") is None
    assert t.client.search_registered_models("name = 'histo_exp-off'") == []
    assert "mlflow.modelVersions" not in t.client.get_logged_model(t.model_id).tags


def test_download_model_says_what_to_pass(store, tmp_path):
    t = tracker(store)
    with pytest.raises(FileNotFoundError, match="neither a .keras file, nor a run"):
        download_model("no-such-run", t.tracking_uri, tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="models:/<name>@<alias>"):
        download_model("models:/no-such-model@champion", t.tracking_uri, tmp_path / "b")


def test_system_metrics_on_trial_and_search_runs(store):
    t = tracker(store, system_metrics=True, system_metrics_interval=0.5)
    t.start_search({}, "", run_name="search")
    t.start_trial("0", {"lr": 0.1})
    trial = t.trial_run_id
    deadline = time.monotonic() + 60  # a few samples at 0.5 s; longer when other tests load the cores
    while time.monotonic() < deadline and not any(
            k.startswith("system/") for k in t.client.get_run(trial).data.metrics):
        time.sleep(0.5)
    t.end_trial("FINISHED", {"val_auc": 0.7})
    t.end_search("FINISHED")
    for run_id in (trial, t.search_run_id):
        metrics = t.client.get_run(run_id).data.metrics
        assert "system/cpu_utilization_percentage" in metrics, sorted(metrics)
        assert "system/system_memory_usage_megabytes" in metrics
    assert not [th for th in threading.enumerate() if th.name == "SystemMetricsMonitor"]
    assert t.client.get_run(trial).data.metrics["val_auc"] == 0.7


def test_ending_runs_kills_open_runs_on_ctrl_c(store):
    t = tracker(store)
    t.start_search({}, "", run_name="search")
    t.start_trial("0", {})
    trial = t.trial_run_id
    with pytest.raises(KeyboardInterrupt), ending_runs(t):
        raise KeyboardInterrupt
    assert {t.client.get_run(r).info.status for r in (trial, t.search_run_id)} == {"KILLED"}


def test_a_ctrl_c_while_the_store_makes_a_trial_run_still_ends_that_run(store, monkeypatch):
    """A launcher's stop can reach a worker while the store makes its trial run: that run must end
    KILLED with the search, not stay RUNNING for ever because the process never learnt its id."""
    make = writes.APPLY["create_run"]

    def interrupted(client, w, ids):
        run_id = make(client, w, ids)
        if w["run_name"].startswith("trial"):
            os.kill(os.getpid(), signal.SIGINT)  # the Ctrl-C lands after the store made the run
        return run_id

    monkeypatch.setitem(writes.APPLY, "create_run", interrupted)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # an xdist worker may ignore SIGINT
    try:
        t = tracker(store)
        t.start_search({}, "", run_name="search")
        with pytest.raises(KeyboardInterrupt), ending_runs(t):
            t.start_trial("0", {})
    finally:
        signal.signal(signal.SIGINT, previous)
    trials = t.client.search_runs([t.experiment_id], f"tags.`mlflow.parentRunId` = '{t.search_run_id}'")
    assert [r.info.status for r in trials] == ["KILLED"]


def test_a_full_artifact_store_keeps_the_model_back_and_sync_uploads_it(tmp_path, keras_file, patches, monkeypatch):
    """ENOSPC from the artifact store (injected: mounting a small file system needs privileges):
    the run still ends FINISHED with its metrics, the model waits in the output folder, and the
    sync uploads it once there is room, once."""
    import mlflow.pyfunc
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    from histo_exp.sync import sync

    out = tmp_path / "out"
    t = tracker(tmp_path / "mlruns", unsent_dir=str(out / "mlflow-unsent"))
    t.start_search({"seed": 1}, "seed: 1\n", run_name="search")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LocalArtifactRepository, "log_artifact", full)
    monkeypatch.setattr(LocalArtifactRepository, "log_artifacts", full)
    t.log_metrics({"test_auc": 0.9})
    t.log_artifact(keras_file, "model")
    assert t.log_model(keras_file, SHAPE) is None  # not logged yet
    t.end_search("FINISHED")

    run = t.client.get_run(t.search_run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["test_auc"] == 0.9  # the metadata went on
    assert t.unsent.pending() == 2 and "python -m histo_exp.sync folder=" in t.describe()
    with pytest.raises(FileNotFoundError):
        download_model(t.search_run_id, t.tracking_uri, tmp_path / "before")

    monkeypatch.undo()  # room again
    assert sync(out) == 2 and sync(out) == 0  # each write once
    got = download_model(t.search_run_id, t.tracking_uri, tmp_path / "after")
    assert got.read_bytes() == keras_file.read_bytes()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", t.tracking_uri)
    model = mlflow.pyfunc.load_model(f"runs:/{t.search_run_id}/{MODEL_NAME}")
    np.testing.assert_allclose(model.predict(patches), expected(keras_file, patches), atol=1e-6)
