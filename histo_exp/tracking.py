"""Experiment tracking: one MLflow run per search, one nested run per KerasTuner trial.

The only module that logs to MLflow. ``Tracker`` is the interface (and records nothing);
``NullTracker`` is ``logger=none``; ``MlflowTracker`` logs through ``MlflowClient`` with explicit
run ids, so no global active run is ever left behind.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelOutput, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_MODEL_VERSIONS
from mlflow.utils.validation import MAX_DATASET_DIGEST_SIZE, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

log = logging.getLogger(__name__)

ROLE = "histo_exp.role"
ERROR = "histo_exp.error"
TRIAL_ID = "histo_exp.trial_id"
RETRY_OF = "histo_exp.retry_of"  # on a trial run: the earlier, interrupted runs of the same trial
RESUMED = "histo_exp.resumed"    # on a search run: how many times it was resumed
VAL_AUC = "histo_exp.val_auc"    # on a registered model version
FINGERPRINT = "histo_exp.data_fingerprint"  # on a registered model version
PER_LAUNCH = ("paths.output_dir", "tuner.distributed.")  # differ at every launch: not worth a warning
MODEL_NAME = "idc_probability"   # the pyfunc logged model: runs:/<search run>/idc_probability
CHAMPION = "champion"
KERAS_RUN_ARTIFACT = "model/best_model.keras"  # what the runner logs on the search run
BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay whole values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def reader(tracking_uri: str) -> MlflowClient:
    """A client for reading an existing store: a SQLite file that is not there is an error, not
    a new empty store (a command that fails writes nothing)."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise FileNotFoundError(f"no MLflow store at {tracking_uri}: run from the folder the search ran in, "
                                "or pass tracking_uri=... for another store")
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def download_model(ref: str, tracking_uri: str, folder: Path) -> Path:
    """The .keras file behind ``ref``, fetched into ``folder``.

    ``ref`` is a search run id (its ``model/best_model.keras``) or an MLflow model URI of the
    pyfunc model ``MlflowTracker.log_model`` logged: ``models:/<name>@<alias>``,
    ``models:/<name>/<version>``, ``models:/<model id>`` or ``runs:/<search run id>/idc_probability``.
    """
    client = reader(tracking_uri)
    if ref.startswith(("models:/", "runs:/")):
        return _download_pyfunc_keras(ref, tracking_uri, folder)
    try:
        client.get_run(ref)
    except Exception as err:
        raise FileNotFoundError(
            f"model={ref!r} is neither a .keras file, nor a run in {tracking_uri}, nor an MLflow "
            "model URI (models:/<name>@<alias>, models:/<name>/<version>, models:/<model id>, "
            f"runs:/<run id>/{MODEL_NAME}); pass tracking_uri=... for another store"
        ) from err
    return Path(client.download_artifacts(ref, KERAS_RUN_ARTIFACT, str(folder)))


def _download_pyfunc_keras(uri: str, tracking_uri: str, folder: Path) -> Path:
    """Download a logged pyfunc model and find the .keras file among its artifacts."""
    import mlflow.artifacts
    from mlflow.models import Model

    from histo_exp.model.pyfunc import KERAS_ARTIFACT

    try:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=_model_location(uri, tracking_uri), dst_path=str(folder), tracking_uri=tracking_uri))
        flavor = Model.load(str(local)).flavors.get("python_function", {})
    except Exception as err:
        raise FileNotFoundError(
            f"model={uri!r}: no MLflow model there in {tracking_uri} ({err}). Pass "
            "models:/<name>@<alias>, models:/<name>/<version>, models:/<model id>, "
            f"runs:/<search run id>/{MODEL_NAME} or a search run id (tracking_uri=... for another store)"
        ) from err
    keras_file = flavor.get("artifacts", {}).get(KERAS_ARTIFACT, {}).get("path")
    if not keras_file:
        raise FileNotFoundError(f"model={uri!r} is an MLflow model that histo_exp did not log "
                                f"(no {KERAS_ARTIFACT!r} artifact): pass a histo_exp model or run")
    return local / keras_file


def _model_location(uri: str, tracking_uri: str) -> str:
    """Where a ``models:/`` or ``runs:/`` URI's model files are, looked up in ``tracking_uri``.

    MLflow resolves these URIs through the global tracking and registry URIs even when given
    others (and then opens ./mlflow.db), so the lookup is done here with a client of this store.
    """
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    client = reader(tracking_uri)
    if uri.startswith("runs:/"):
        run_id, _, name = uri.removeprefix("runs:/").partition("/")
        return _logged_model_of_run(client, run_id, name.strip("/")).artifact_location
    found = get_model_name_and_version(client, uri)
    if len(found) == 1:
        return client.get_logged_model(found[0]).artifact_location
    return client.get_model_version_download_uri(*found)


def _logged_model_of_run(client: MlflowClient, run_id: str, name: str) -> Any:
    """The newest model named ``name`` that run ``run_id`` logged."""
    experiment = client.get_run(run_id).info.experiment_id
    mine, token = [], None
    while True:
        page = client.search_logged_models([experiment], filter_string=f"name = '{name}'", page_token=token)
        mine += [m for m in page if m.source_run_id == run_id]
        token = page.token
        if not token:
            break
    if not mine:
        raise MlflowException(f"run {run_id} logged no model named {name!r}")
    return max(mine, key=lambda m: m.creation_timestamp)


def trial_runs(run_id: str, tracking_uri: str) -> list[dict[str, Any]]:
    """The trial runs nested under a search run: trial id, status, params, final metrics."""
    client = reader(tracking_uri)
    try:
        search = client.get_run(run_id)
    except Exception as err:
        raise FileNotFoundError(f"no run {run_id!r} in {tracking_uri} (pass tracking_uri=... for another store)") from err
    runs = client.search_runs([search.info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{run_id}'", max_results=10000)
    return [{"trial": r.data.tags.get(TRIAL_ID, r.info.run_name),
             "status": r.info.status, "params": r.data.params, "metrics": r.data.metrics}
            for r in runs]


class Tracker:
    """What the runner and the tuner report to; records nothing (the type every tracker has)."""

    search_run_id: str | None = None
    tracking_uri: str | None = None

    def start_search(self, params: Mapping[str, Any], config_yaml: str, run_name: str,
                     tags: Mapping[str, str] | None = None, resume: str | None = None) -> None:
        """Open the search run (or reopen ``resume``)."""

    def join_search(self, run_id: str) -> None:
        """Log trials under another process's search run."""

    def is_running(self, run_id: str) -> bool:
        """Whether ``run_id`` is an open run of this store."""
        return False

    def start_trial(self, trial_id: str, hparams: Mapping[str, Any],
                    tags: Mapping[str, str] | None = None) -> None:
        """Open a run for one attempt at a trial."""

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Record one epoch of the open trial."""

    def end_trial(self, status: str, metrics: Mapping[str, float], error: str | None = None) -> None:
        """Close the open trial's run with its final metrics."""

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        """Record metrics of the search run."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Attach a file to the search run."""

    def log_trial_artifact(self, path: str | Path) -> None:
        """Attach a file to the open trial's run."""

    def log_dataset(self, name: str, digest: str, source: str, profile: Mapping[str, int]) -> None:
        """Record the data the search trained on."""

    def log_model(self, keras_path: Path, input_shape: tuple[int, int, int]) -> str | None:
        """Record the best model as a servable model; its URI, or None when nothing is recorded."""
        return None

    def register(self, val_auc: float, fingerprint: str) -> str | None:
        """Add the logged model to the registry; the new version, or None."""
        return None

    def end_search(self, status: str) -> None:
        """Close the open runs with ``status``."""

    def describe(self) -> str:
        """Where to look at what was recorded."""
        return "tracking is off"


class NullTracker(Tracker):
    """Records nothing (``logger=none``)."""

    def describe(self) -> str:
        return "tracking is off (logger=none)"


@contextlib.contextmanager
def ending_runs(tracker: Tracker) -> Iterator[None]:
    """End the open runs FINISHED, KILLED (Ctrl-C) or FAILED, whichever way the block ends."""
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end_search(status)


class MlflowTracker(Tracker):
    """Logs through ``MlflowClient`` with explicit run ids, so nothing depends on a global run."""

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: str | None = None,
                 register_model: bool = False, registered_model_name: str = "histo_exp",
                 system_metrics: bool = True, system_metrics_interval: float = 10.0):
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.register_model = register_model
        self.registered_model_name = registered_model_name
        self.system_metrics = system_metrics
        self.system_metrics_interval = float(system_metrics_interval)
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._experiment(artifact_location)
        self.search_run_id: str | None = None
        self.trial_run_id: str | None = None
        self.model_id: str | None = None
        self._owner = False
        self._monitors: dict[str, Any] = {}  # run id -> its SystemMetricsMonitor

    def _experiment(self, artifact_location: str | None) -> str:
        found = self.client.get_experiment_by_name(self.experiment_name)
        if found is not None:
            return found.experiment_id
        remote = self.tracking_uri.startswith(("http://", "https://"))
        # A server keeps artifacts where it was told to (--artifacts-destination).
        location = Path(artifact_location).absolute().as_uri() if artifact_location and not remote else None
        try:
            return self.client.create_experiment(self.experiment_name, artifact_location=location)
        except Exception:  # created meanwhile by a parallel job
            found = self.client.get_experiment_by_name(self.experiment_name)
            if found is None:
                raise
            return found.experiment_id

    def start_search(self, params: Mapping[str, Any], config_yaml: str, run_name: str,
                     tags: Mapping[str, str] | None = None, resume: str | None = None) -> None:
        """Open a new search run, or reopen ``resume`` (a search run of this store) to go on in it."""
        previous = self._run(resume) if resume else None
        if previous is not None and previous.info.lifecycle_stage == "active":  # not deleted in the UI
            self._reopen(previous, params, tags or {})
            self._watch(self.search_run_id, resume=True)
            return
        if resume:
            log.warning("the search run %s recorded in the tuner folder is not in %s (or was deleted): "
                        "starting a new run for the resumed search", resume, self.tracking_uri)
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={ROLE: "search", **(tags or {})})
        self.search_run_id = run.info.run_id
        self._owner = True
        self._log_params(params)
        self.client.log_text(self.search_run_id, config_yaml, "config.yaml")
        self._watch(self.search_run_id)

    def _reopen(self, run: Any, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        self.search_run_id = run.info.run_id
        self._owner = True
        self.client.update_run(self.search_run_id, status="RUNNING")
        resumed = int(run.data.tags.get(RESUMED, "0")) + 1
        for key, value in {**tags, RESUMED: str(resumed)}.items():
            self.client.set_tag(self.search_run_id, key, value)
        old = run.data.params
        new = _param_values(params)
        changed = {k: (old[k], v) for k, v in new.items()
                   if k in old and old[k] != v and not k.startswith(PER_LAUNCH)}
        if changed:
            log.warning("resumed with changed settings; the run keeps its first params: %s",
                        ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items()))
        self._log_params({k: v for k, v in new.items() if k not in old})
        log.info("resuming MLflow search run %s (resume #%d)", self.search_run_id, resumed)

    def join_search(self, run_id: str) -> None:
        """Log trials under another process's search run (a distributed worker); never end it."""
        self.search_run_id = run_id
        self._owner = False

    def is_running(self, run_id: str) -> bool:
        run = self._run(run_id)
        return run is not None and run.info.status == "RUNNING"

    def start_trial(self, trial_id: str, hparams: Mapping[str, Any],
                    tags: Mapping[str, str] | None = None) -> None:
        """A nested run per attempt at a trial; a retry (after a resume) names the runs before it."""
        earlier = self.client.search_runs(
            [self.experiment_id],
            f"tags.`mlflow.parentRunId` = '{self.search_run_id}' and tags.`{TRIAL_ID}` = '{trial_id}'")
        retry = {RETRY_OF: ",".join(r.info.run_id for r in earlier)} if earlier else {}
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{trial_id}",
            tags={ROLE: "trial", "mlflow.parentRunId": self.search_run_id, TRIAL_ID: trial_id,
                  **retry, **(tags or {})},
        )
        self.trial_run_id = run.info.run_id
        self._next_step = 0
        self.client.log_batch(self.trial_run_id,
                              params=[Param(k, v) for k, v in _param_values(hparams).items()])
        self._watch(self.trial_run_id)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        if self.trial_run_id:
            self._log(self.trial_run_id, metrics, step=epoch)
            self._next_step = epoch + 1

    def end_trial(self, status: str, metrics: Mapping[str, float], error: str | None = None) -> None:
        if not self.trial_run_id:
            return
        self._unwatch(self.trial_run_id)
        if metrics:
            # After the last epoch, so MLflow's latest value of the metric is the final one.
            self._log(self.trial_run_id, metrics, step=self._next_step)
        if error:
            self.client.set_tag(self.trial_run_id, ERROR, error[-MAX_TAG_VAL_LENGTH:])
        self.client.set_terminated(self.trial_run_id, status=status)
        self.trial_run_id = None

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        self._log(self.search_run_id, metrics)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.search_run_id, str(path), artifact_path)

    def log_trial_artifact(self, path: str | Path) -> None:
        if self.trial_run_id:
            self.client.log_artifact(self.trial_run_id, str(path))

    def log_dataset(self, name: str, digest: str, source: str, profile: Mapping[str, int]) -> None:
        """The data as an MLflow input of the search run (the UI's Datasets column), once per run.

        ``digest`` is the data cache fingerprint, ``source`` the data root, ``profile`` the patch
        and patient counts per split. MLflow keeps one dataset per name and digest in an
        experiment, so a resumed run (or another run on the same data) adds no duplicate.
        """
        short = digest[:MAX_DATASET_DIGEST_SIZE]
        run = self._run(self.search_run_id)
        if run is not None and any(d.dataset.name == name and d.dataset.digest == short
                                   for d in run.inputs.dataset_inputs):
            return
        profile = {**profile, **({"fingerprint": digest} if short != digest else {})}
        dataset = Dataset(name=name, digest=short, source_type="local", source=json.dumps({"uri": source}),
                          profile=json.dumps(profile))
        self.client.log_inputs(self.search_run_id, [
            DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])])

    def log_model(self, keras_path: Path, input_shape: tuple[int, int, int]) -> str | None:
        """Log ``keras_path`` as an MLflow pyfunc model of the search run; returns ``models:/<model id>``.

        A LoggedModel named ``idc_probability`` whose source run is the search run, built with
        MlflowClient calls, since ``mlflow.pyfunc.log_model`` needs the global tracking URI and
        (without an active run) files the model in the Default experiment. These URIs load and
        serve it (``mlflow models serve -m <uri>``): ``models:/<model id>``,
        ``runs:/<search run id>/idc_probability`` and, once registered,
        ``models:/<name>/<version>`` and ``models:/<name>@champion``. Input: uint8 patches
        (N, H, W, C); output: the IDC probability, float32 (N,).
        """
        import mlflow.pyfunc
        from mlflow.models import Model, ModelSignature
        from mlflow.types import Schema, TensorSpec

        import keras

        import histo_exp
        from histo_exp.model.pyfunc import KERAS_ARTIFACT, IdcProbability

        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *input_shape))]),
                                   outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,))]))
        model = self.client.create_logged_model(self.experiment_id, name=MODEL_NAME,
                                                source_run_id=self.search_run_id)
        try:
            with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), _quiet_model_logging():
                # An input example would be run through the model here; the signature says enough.
                warnings.filterwarnings("ignore", message=".*An input example was not provided")
                local = Path(tmp) / "model"
                mlflow.pyfunc.save_model(
                    str(local), python_model=IdcProbability(keras.backend.backend()),
                    artifacts={KERAS_ARTIFACT: str(keras_path)},
                    # histo_exp/conf links to ../conf: the copy follows the link, so it holds the configs.
                    code_paths=[str(Path(histo_exp.__file__).parent)],
                    signature=signature, pip_requirements=_requirements(),
                    mlflow_model=Model(artifact_path=model.artifact_location, run_id=self.search_run_id,
                                       model_uuid=model.model_id, model_id=model.model_id),
                )
                self.client.log_model_artifacts(model.model_id, str(local))
            self.client.log_outputs(self.search_run_id, [LoggedModelOutput(model.model_id, step=0)])
        except BaseException:
            self.client.finalize_logged_model(model.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(model.model_id, "READY")
        self.model_id = model.model_id
        return f"models:/{model.model_id}"

    def register(self, val_auc: float, fingerprint: str) -> str | None:
        """Register the logged model (``logger.register_model``) and maybe move alias ``champion``.

        ``val_auc`` is the validation AUC (never a test metric), ``fingerprint`` the data cache
        fingerprint; both become version tags. The alias moves to the new version when no version
        holds it, or when the champion was trained on the same data and the new AUC is higher.
        AUCs on different data do not compare: when the champion was trained on other data, the
        data of the newest registration wins and the alias goes to the best version on it.
        """
        if not self.register_model:
            return None
        if self.model_id is None:
            log.warning("logger.register_model is set, but no model was logged (log_model): "
                        "nothing to register")
            return None
        name = self.registered_model_name
        if not self.client.search_registered_models(f"name = '{name}'"):
            with contextlib.suppress(MlflowException):  # created meanwhile by a parallel job
                self.client.create_registered_model(name)
        # The logged model's location, not models:/<id>: a SQLite registry resolves that id through
        # the global tracking URI, not this client's.
        source = self.client.get_logged_model(self.model_id).artifact_location
        version = self.client.create_model_version(
            name, source, run_id=self.search_run_id, model_id=self.model_id,
            tags={VAL_AUC: repr(float(val_auc)), FINGERPRINT: fingerprint})
        self._link_version(version.name, version.version)
        log.info("registered %s version %s (val_auc %.4f)", name, version.version, val_auc)
        self._crown(str(version.version), float(val_auc), fingerprint)
        return str(version.version)

    def _link_version(self, name: str, version: str) -> None:
        """Name the version on the logged model, as ``mlflow.register_model`` does (the UI shows it)."""
        tags = self.client.get_logged_model(self.model_id).tags
        linked = json.loads(tags.get(MLFLOW_MODEL_VERSIONS, "[]")) + [{"name": name, "version": version}]
        self.client.set_logged_model_tags(self.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(linked)})

    def _crown(self, version: str, val_auc: float, fingerprint: str) -> None:
        name = self.registered_model_name
        try:
            champ = self.client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            champ = None
        if champ is None:
            target, why = version, "no version held it"
        elif champ.tags.get(FINGERPRINT) == fingerprint:
            old = float(champ.tags.get(VAL_AUC, "-inf"))
            if not val_auc > old:
                log.info("alias %s stays on %s version %s: its val_auc %.4f is not below the new "
                         "version %s's %.4f on the same data", CHAMPION, name, champ.version, old,
                         version, val_auc)
                return
            target = version
            why = f"val_auc {val_auc:.4f} beats version {champ.version}'s {old:.4f} on the same data"
        else:
            target, best = self._best_on(fingerprint, version, val_auc)
            why = (f"version {champ.version} was trained on other data "
                   f"({champ.tags.get(FINGERPRINT, 'unknown')}); AUCs on different data do not compare, so "
                   f"the alias goes to the best version on the newest data {fingerprint} "
                   f"(val_auc {best:.4f})")
        self.client.set_registered_model_alias(name, CHAMPION, target)
        log.info("alias %s -> %s version %s: %s", CHAMPION, name, target, why)

    def _best_on(self, fingerprint: str, version: str, val_auc: float) -> tuple[str, float]:
        """The registered version with the highest val_auc on ``fingerprint`` (newest on a tie)."""
        best = (val_auc, int(version))
        found = self.client.search_model_versions(f"name = '{self.registered_model_name}'")
        for mv in found:
            if mv.tags.get(FINGERPRINT) == fingerprint and VAL_AUC in mv.tags:
                best = max(best, (float(mv.tags[VAL_AUC]), int(mv.version)))
        return str(best[1]), best[0]

    def end_search(self, status: str) -> None:
        if self.trial_run_id:
            self.end_trial(status, {})
        if self.search_run_id and self._owner:
            self._unwatch(self.search_run_id)
            self.client.set_terminated(self.search_run_id, status=status)

    def describe(self) -> str:
        store = self.tracking_uri
        # The UI opens on GenAI pages unless asked for the training runs.
        page = f"#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"
        if store.startswith(("http://", "https://")):
            return f"MLflow UI: {store.rstrip('/')}/{page}"
        return (f"MLflow UI: make ui, then open http://127.0.0.1:5000/{page}\n"
                f"  (or: mlflow ui --backend-store-uri {store})")

    def _watch(self, run_id: str, resume: bool = False) -> None:
        """Log CPU, memory, disk, network (and GPU, where NVML finds one) as ``system/*`` metrics."""
        if not self.system_metrics:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # start/stop per trial
            monitor = SystemMetricsMonitor(run_id, sampling_interval=self.system_metrics_interval,
                                           resume_logging=resume, tracking_uri=self.tracking_uri)
        except Exception as err:  # psutil missing, say
            log.warning("no system metrics for run %s (%s); logger.system_metrics=false turns them off",
                        run_id, err)
            self.system_metrics = False
            return
        monitor.start()
        self._monitors[run_id] = monitor

    def _unwatch(self, run_id: str) -> None:
        monitor = self._monitors.pop(run_id, None)
        if monitor is not None:
            monitor.finish()

    def _run(self, run_id: str) -> Any:
        try:
            return self.client.get_run(run_id)
        except Exception:  # MlflowException: no such run in this store
            return None

    def _log_params(self, params: Mapping[str, Any]) -> None:
        """``log_batch`` splits the params into batches MLflow accepts."""
        self.client.log_batch(self.search_run_id,
                              params=[Param(k, v) for k, v in _param_values(params).items()])

    def _log(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        self.client.log_batch(run_id, metrics=batch)


def _param_values(params: Mapping[str, Any]) -> dict[str, str]:
    """Param values as MLflow stores them: strings cut at its length limit."""
    return {k: str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in params.items()}


@contextlib.contextmanager
def _quiet_model_logging() -> Iterator[None]:
    """No progress bar for copying one local file, and no cloudpickle caution about our own class
    (its advice, models-from-code, would not carry the Keras file as an artifact)."""
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)
    try:
        with mock.patch.dict(os.environ, {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):
            yield
    finally:
        pyfunc_log.setLevel(level)


def _requirements() -> list[str]:
    """Pinned pip requirements of the pyfunc model, so MLflow need not infer them in a subprocess."""
    import keras

    backend = BACKEND_PACKAGES.get(keras.backend.backend(), keras.backend.backend())
    return [f"{pkg}=={importlib.metadata.version(pkg)}" for pkg in ("mlflow", "keras", backend, "numpy")]
