"""MLflow tracking: one search run, one nested run per KerasTuner trial, through ``MlflowClient``."""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from mlflow.utils.validation import MAX_DATASET_DIGEST_SIZE, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from histo_exp.locks import held
from histo_exp.tracking.base import ERROR, RESUMED, RETRY_OF, ROLE, TRIAL_ID, Tracker
from histo_exp.tracking.models import log_pyfunc_model, register_version

log = logging.getLogger(__name__)

# How long a process waits for another to create the same SQLite store: creating the schema takes
# seconds, so only a process stuck while holding the lock makes anyone wait this long.
CREATION_WAIT_S = 300.0

# MLflow's monitor logs its start and stop at INFO: once per trial, that is noise.
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)

PER_LAUNCH = ("paths.output_dir", "tuner.distributed.")  # differ at every launch: not worth a warning


def check_server(tracking_uri: str | None, timeout_s: float = 5.0) -> None:
    """Fail in seconds, with what to do, when a tracking server does not answer: MLflow's own HTTP
    retries would spend minutes on it, after the data was decoded."""
    if not tracking_uri or not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s):
            return
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise ConnectionError(f"no MLflow server answers at logger.tracking_uri={tracking_uri} ({reason}): "
                              "start it (make server), or log to a local store (drop logger.tracking_uri) "
                              "or not at all (logger=none)") from None


def creation_lock(tracking_uri: str, timeout_s: float = CREATION_WAIT_S) -> contextlib.AbstractContextManager:
    """A lock file beside a SQLite store, held while its schema and experiment are made.

    Processes that open a new store at once (a multirun's jobs, a chief and its workers, two
    runs started by hand) otherwise race in MLflow's migrations and one dies. A server store
    needs none: the server makes its own schema.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    return held(db.with_name(f"{db.name}.lock"), f"creates the MLflow store {db}", timeout_s)


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
        with creation_lock(tracking_uri):
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
        self._close_orphans()
        log.info("resuming MLflow search run %s (resume #%d)", self.search_run_id, resumed)

    def _close_orphans(self) -> None:
        """Mark KILLED the trial runs a killed process left RUNNING (SIGKILL, a lost machine): nothing
        else can end them, and a resume runs before any trial of its own (a chief before its workers)."""
        orphans = self.client.search_runs(
            [self.experiment_id],
            f"tags.`mlflow.parentRunId` = '{self.search_run_id}' and attributes.status = 'RUNNING'")
        for run in orphans:
            self.client.set_tag(run.info.run_id, ERROR, "its process ended without closing it (killed); "
                                "the trial is retried by the resumed search")
            self.client.set_terminated(run.info.run_id, status="KILLED")
        if orphans:
            log.warning("marked KILLED %d trial run(s) left RUNNING by a process that was killed: %s",
                        len(orphans), ", ".join(r.info.run_id for r in orphans))

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

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.search_run_id, key, str(value)[:MAX_TAG_VAL_LENGTH])

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
        inputs = [DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])]
        try:
            self.client.log_inputs(self.search_run_id, inputs)
        except MlflowException as error:
            # Parallel searches on the same data (a multirun's launcher) race to insert the one
            # dataset row; the loser's retry finds that row and only links it to its run.
            if "UNIQUE constraint" not in str(error) and "IntegrityError" not in str(error):
                raise
            self.client.log_inputs(self.search_run_id, inputs)

    def log_model(self, keras_path: Path, input_shape: tuple[int, int, int]) -> str | None:
        """Log the model as an MLflow pyfunc model of the search run; returns ``models:/<model id>``."""
        self.model_id = log_pyfunc_model(self.client, self.experiment_id, self.search_run_id, keras_path,
                                         input_shape)
        return f"models:/{self.model_id}"

    def register(self, val_auc: float, fingerprint: str) -> str | None:
        """Register the logged model (``logger.register_model``); ``champion`` moves if it is the best."""
        if not self.register_model:
            return None
        if self.model_id is None:
            log.warning("logger.register_model is set, but no model was logged (log_model): "
                        "nothing to register")
            return None
        return register_version(self.client, self.registered_model_name, self.model_id, self.search_run_id,
                                val_auc, fingerprint)

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


