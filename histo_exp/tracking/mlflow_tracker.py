"""MLflow tracking: one search run, one nested run per KerasTuner trial, through ``MlflowClient``."""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from histo_exp.locks import held
from histo_exp.signals import deferred
from histo_exp.tracking import writes
from histo_exp.tracking.base import ERROR, RESUMED, RETRY_OF, ROLE, TRIAL_ID, Tracker
from histo_exp.tracking.spool import Spool, reason, unreachable

log = logging.getLogger(__name__)

# How long a process waits for another to create the same SQLite store: creating the schema takes
# seconds, so only a process stuck while holding the lock makes anyone wait this long.
CREATION_WAIT_S = 300.0

# MLflow's monitor logs its start and stop at INFO: once per trial, that is noise. urllib3 warns at
# every HTTP retry of every request while a server is away: the tracker says it once instead.
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)

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
    """Logs through ``MlflowClient`` with explicit run ids, so nothing depends on a global run.

    A store that stops answering mid-run does not stop training: every write it could not take
    (and every later one, until it answers again) is kept in ``unsent_dir`` and sent when it is
    back, by this run at its next trial, by a resume of the search, or by ``python -m histo_exp.sync``.
    """

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: str | None = None,
                 register_model: bool = False, registered_model_name: str = "histo_exp",
                 system_metrics: bool = True, system_metrics_interval: float = 10.0,
                 unsent_dir: str | None = None, http_timeout_s: float = 20, http_retries: int = 2):
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.register_model = register_model
        self.registered_model_name = registered_model_name
        self.system_metrics = system_metrics
        self.system_metrics_interval = float(system_metrics_interval)
        http_settings(http_timeout_s, http_retries)
        with creation_lock(tracking_uri):
            self.client = MlflowClient(tracking_uri=tracking_uri)
            self.experiment_id = self._experiment(artifact_location)
        self.unsent = Spool(Path(unsent_dir), tracking_uri) if unsent_dir else None
        self.offline = False  # the store stopped answering: every write goes to the spool until it is back
        self._said: set[str] = set()
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
        with deferred():  # a Ctrl-C here would leave a run nobody closes
            self.search_run_id = self._write(writes.create_run(self.experiment_id, run_name,
                                                               {ROLE: "search", **(tags or {})}))
            self._owner = True
        self._write(writes.log_batch(self.search_run_id, params=_param_values(params)))
        self._write(writes.log_text(self.search_run_id, config_yaml, "config.yaml"))
        self._watch(self.search_run_id)

    def _reopen(self, run: Any, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        self.search_run_id = run.info.run_id
        self._owner = True
        self._write(writes.set_status(self.search_run_id, "RUNNING", ended=False))
        resumed = int(run.data.tags.get(RESUMED, "0")) + 1
        old = run.data.params
        new = _param_values(params)
        changed = {k: (old[k], v) for k, v in new.items()
                   if k in old and old[k] != v and not k.startswith(PER_LAUNCH)}
        if changed:
            log.warning("resumed with changed settings; the run keeps its first params: %s",
                        ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items()))
        self._write(writes.log_batch(self.search_run_id, tags={**tags, RESUMED: str(resumed)},
                                     params={k: v for k, v in new.items() if k not in old}))
        self._close_orphans()
        log.info("resuming MLflow search run %s (resume #%d)", self.search_run_id, resumed)

    def _close_orphans(self) -> None:
        """Mark KILLED the trial runs a killed process left RUNNING (SIGKILL, a lost machine): nothing
        else can end them, and a resume runs before any trial of its own (a chief before its workers)."""
        orphans = self._search(f"tags.`mlflow.parentRunId` = '{self.search_run_id}' and attributes.status = 'RUNNING'")
        for run in orphans:
            self._write(writes.log_batch(run.info.run_id, tags={
                ERROR: "its process ended without closing it (killed); the trial is retried by the resumed search"}))
            self._write(writes.set_status(run.info.run_id, "KILLED"))
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
        self._reconnect()
        earlier = self._search(f"tags.`mlflow.parentRunId` = '{self.search_run_id}' and tags.`{TRIAL_ID}` = '{trial_id}'")
        retry = {RETRY_OF: ",".join(r.info.run_id for r in earlier)} if earlier else {}
        with deferred():  # a Ctrl-C here would leave a run nobody closes
            self.trial_run_id = self._write(writes.create_run(
                self.experiment_id, f"trial-{trial_id}",
                {ROLE: "trial", "mlflow.parentRunId": self.search_run_id, TRIAL_ID: trial_id, **retry, **(tags or {})}))
            self._next_step = 0
        self._write(writes.log_batch(self.trial_run_id, params=_param_values(hparams)))
        self._watch(self.trial_run_id)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        if self.trial_run_id:
            self._write(writes.log_batch(self.trial_run_id, metrics, step=epoch))
            self._next_step = epoch + 1

    def end_trial(self, status: str, metrics: Mapping[str, float], error: str | None = None) -> None:
        if not self.trial_run_id:
            return
        self._unwatch(self.trial_run_id)
        # After the last epoch, so MLflow's latest value of the metric is the final one.
        self._write(writes.log_batch(self.trial_run_id, metrics, step=self._next_step,
                                     tags={ERROR: error[-MAX_TAG_VAL_LENGTH:]} if error else None))
        self._write(writes.set_status(self.trial_run_id, status))
        self.trial_run_id = None

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        self._write(writes.log_batch(self.search_run_id, metrics))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._write(writes.log_artifact(self.search_run_id, path, artifact_path))

    def log_trial_artifact(self, path: str | Path) -> None:
        if self.trial_run_id:
            self._write(writes.log_artifact(self.trial_run_id, path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._write(writes.log_batch(self.search_run_id, tags={k: str(v)[:MAX_TAG_VAL_LENGTH] for k, v in tags.items()}))

    def log_dataset(self, name: str, digest: str, source: str, profile: Mapping[str, int]) -> None:
        """The data as an MLflow input of the search run (the UI's Datasets column), once per run."""
        self._write(writes.log_dataset(self.search_run_id, name, digest, source, profile))

    def log_model(self, keras_path: Path, input_shape: tuple[int, int, int]) -> str | None:
        """Log the model as an MLflow pyfunc model of the search run; returns ``models:/<model id>``
        (None while the store is away: the sync logs it)."""
        self.model_id = self._write(writes.log_model(self.experiment_id, self.search_run_id, keras_path, input_shape))
        return None if writes.is_offline(self.model_id) else f"models:/{self.model_id}"

    def register(self, val_auc: float, fingerprint: str) -> str | None:
        """Register the logged model (``logger.register_model``); ``champion`` moves if it is the best."""
        if not self.register_model:
            return None
        if self.model_id is None:
            log.warning("logger.register_model is set, but no model was logged (log_model): "
                        "nothing to register")
            return None
        return self._write(writes.register(self.registered_model_name, self.model_id, self.search_run_id,
                                           val_auc, fingerprint))

    def end_search(self, status: str) -> None:
        self._reconnect()
        if self.trial_run_id:
            self.end_trial(status, {})
        if self.search_run_id and self._owner:
            self._unwatch(self.search_run_id)
            self._write(writes.set_status(self.search_run_id, status))

    def send_unsent(self, folders: Iterable[Path]) -> None:
        """Send what earlier processes of this search kept while the store was away (on resume),
        so that their trials are in the store before this one counts and retries them."""
        for folder in folders:
            for spool in Spool.waiting(folder):
                if spool.store_uri() != self.tracking_uri:
                    continue
                try:
                    sent = spool.send(self.client)
                except Exception as err:
                    if not unreachable(err):
                        raise
                    log.warning("could not send the MLflow writes kept in %s (%s); `python -m histo_exp.sync "
                                "folder=%s` sends them later", spool.folder, reason(err), spool.folder)
                    continue
                log.info("sent %d MLflow write(s) kept by an earlier run in %s", sent, spool.folder)

    def describe(self) -> str:
        store = self.tracking_uri
        # The UI opens on GenAI pages unless asked for the training runs.
        page = f"#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"
        if store.startswith(("http://", "https://")):
            where = f"MLflow UI: {store.rstrip('/')}/{page}"
        else:
            where = (f"MLflow UI: make ui, then open http://127.0.0.1:5000/{page}\n"
                     f"  (or: mlflow ui --backend-store-uri {store})")
        pending = self.unsent.pending() if self.unsent else 0
        if pending:
            where += (f"\n{pending} MLflow write(s) are kept in {self.unsent.folder}, not in the store yet: "
                      f"`python -m histo_exp.sync folder={self.unsent.folder.parent}` sends them once it is back")
        return where

    def _write(self, write: writes.Write) -> str | None:
        """Carry ``write`` out on the store, or keep it when the store cannot take it (or it names a
        run made while the store was away); returns the id a new run or model got (an offline id if kept)."""
        if self.unsent is None:
            return writes.apply(self.client, write)
        if not self.offline and not writes.refers_offline(write):
            try:
                return writes.apply(self.client, write)
            except Exception as err:
                if not unreachable(err):
                    raise
                self._lost(write, err)
        try:
            self.unsent.keep(write)
        except OSError as err:
            log.error("MLflow write %s lost: the store did not take it and %s could not keep it (%s)",
                      write["op"], self.unsent.folder, err)
        return write.get("id")

    def _lost(self, write: writes.Write, err: BaseException) -> None:
        """Say once what happened and where the writes go; a failed artifact upload (a full disk, say)
        keeps that file back, a failed metadata write takes the tracker offline until the store answers."""
        artifact = write["op"] in writes.ARTIFACTS
        if not artifact:
            self.offline = True
            logging.getLogger("mlflow.system_metrics").setLevel(logging.CRITICAL)  # its own failures, each sample
            for run_id in list(self._monitors):
                self._unwatch(run_id)
        kind = "artifact" if artifact else "store"
        if kind not in self._said:
            self._said.add(kind)
            what = (f"could not store an artifact of run {write.get('run')} ({reason(err)})" if artifact else
                    f"the MLflow store {self.tracking_uri} stopped answering ({reason(err)})")
            log.warning("%s: training goes on, and what was not sent is kept in %s; it is sent when the store "
                        "answers again (at the next trial, on resume, or by `python -m histo_exp.sync folder=%s`)",
                        what, self.unsent.folder, self.unsent.folder.parent)

    def _reconnect(self) -> None:
        """While offline, ask the store whether it is back (seconds); if so, send what was kept and go on online."""
        if not (self.offline and self.unsent):
            return
        try:
            check_server(self.tracking_uri, timeout_s=2.0)
            sent = self.unsent.send(self.client)
        except Exception as err:
            if not unreachable(err):
                raise
            return
        ids = self.unsent.progress()["ids"]
        self.search_run_id, self.trial_run_id, self.model_id = (
            ids.get(r, r) if r else r for r in (self.search_run_id, self.trial_run_id, self.model_id))
        self.offline = False
        self._said.discard("store")
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        log.warning("the MLflow store %s answers again: sent the %d write(s) kept while it was away",
                    self.tracking_uri, sent)

    def _watch(self, run_id: str, resume: bool = False) -> None:
        """Log CPU, memory, disk, network (and GPU, where NVML finds one) as ``system/*`` metrics."""
        if not self.system_metrics or self.offline or writes.is_offline(run_id):
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
        if self.offline or writes.is_offline(run_id):
            return None
        try:
            return self.client.get_run(run_id)
        except Exception:  # MlflowException: no such run in this store
            return None

    def _search(self, query: str) -> list:
        """Runs of this experiment matching ``query``; none while the store is away."""
        if self.offline or writes.is_offline(self.search_run_id):
            return []
        try:
            return self.client.search_runs([self.experiment_id], query)
        except Exception as err:
            if self.unsent is None or not unreachable(err):
                raise
            return []


def http_settings(timeout_s: float, retries: int) -> None:
    """MLflow's HTTP timeout and retries for this process: its defaults (120 s, 7 retries with
    growing back-off) spend minutes on a server that is gone before a write is kept for later."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(timeout_s))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(int(retries))
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"


def _param_values(params: Mapping[str, Any]) -> dict[str, str]:
    """Param values as MLflow stores them: strings cut at its length limit."""
    return {k: str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in params.items()}
