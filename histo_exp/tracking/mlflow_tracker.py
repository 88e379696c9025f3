"""MLflow tracking: one search run, one nested run per KerasTuner trial, through ``MlflowClient``."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

import histo_exp.tracking.writes as writes
from histo_exp.signals import deferred
from histo_exp.tracking.base import ERROR, RESUMED, RETRY_OF, ROLE, TRIAL_ID, Tracker
from histo_exp.tracking.connection import http_settings, open_experiment
from histo_exp.tracking.offline import OfflineWriter
from histo_exp.tracking.spool import Spool, unreachable
from histo_exp.tracking.system_metrics import SystemMetrics

log = logging.getLogger(__name__)

PER_LAUNCH = ("paths.output_dir", "tuner.distributed.")  # differ at every launch: not worth a warning


class MlflowTracker(Tracker):
    """Logs through ``MlflowClient`` with explicit run ids, so nothing depends on a global run.

    A store that stops answering mid-run does not stop training: every write it could not take
    (and every later one, until it answers again) is kept in ``unsent_dir`` and sent when it is
    back, by this run at its next trial, by a resume of the search, or by ``python -m histo_exp.sync``
    (``OfflineWriter``).
    """

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: str | None = None,
                 register_model: bool = False, registered_model_name: str = "histo_exp",
                 system_metrics: bool = True, system_metrics_interval: float = 10.0,
                 unsent_dir: str | None = None, http_timeout_s: float = 20, http_retries: int = 2):
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.register_model = register_model
        self.registered_model_name = registered_model_name
        http_settings(http_timeout_s, http_retries)
        self.client, self.experiment_id = open_experiment(tracking_uri, experiment_name, artifact_location)
        self.monitors = SystemMetrics(tracking_uri, system_metrics, system_metrics_interval)
        self.writer = OfflineWriter(self.client, tracking_uri, unsent_dir, on_change=self._store_changed)
        self.search_run_id: str | None = None
        self.trial_run_id: str | None = None
        self.model_id: str | None = None
        self._owner = False

    @property
    def offline(self) -> bool:
        """Whether the store stopped answering: every write goes to the spool until it is back."""
        return self.writer.offline

    @property
    def unsent(self) -> Spool | None:
        """Where the writes the store could not take are kept (``unsent_dir``)."""
        return self.writer.spool

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
            self.search_run_id = self.writer.write(
                writes.create_run(self.experiment_id, run_name, {ROLE: "search", **(tags or {})}))
            self._owner = True
        self.writer.write(writes.log_batch(self.search_run_id, params=_param_values(params)))
        self.writer.write(writes.log_text(self.search_run_id, config_yaml, "config.yaml"))
        self._watch(self.search_run_id)

    def _reopen(self, run: Any, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        self.search_run_id = run.info.run_id
        self._owner = True
        self.writer.write(writes.set_status(self.search_run_id, "RUNNING", ended=False))
        resumed = int(run.data.tags.get(RESUMED, "0")) + 1
        old = run.data.params
        new = _param_values(params)
        changed = {k: (old[k], v) for k, v in new.items()
                   if k in old and old[k] != v and not k.startswith(PER_LAUNCH)}
        if changed:
            log.warning("resumed with changed settings; the run keeps its first params: %s",
                        ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items()))
        self.writer.write(writes.log_batch(self.search_run_id, tags={**tags, RESUMED: str(resumed)},
                                           params={k: v for k, v in new.items() if k not in old}))
        self._close_orphans()
        log.info("resuming MLflow search run %s (resume #%d)", self.search_run_id, resumed)

    def _close_orphans(self) -> None:
        """Mark KILLED the trial runs a killed process left RUNNING (SIGKILL, a lost machine): nothing
        else can end them, and a resume runs before any trial of its own (a chief before its workers)."""
        orphans = self._search(f"tags.`mlflow.parentRunId` = '{self.search_run_id}' and attributes.status = 'RUNNING'")
        for run in orphans:
            self.writer.write(writes.log_batch(run.info.run_id, tags={
                ERROR: "its process ended without closing it (killed); the trial is retried by the resumed search"}))
            self.writer.write(writes.set_status(run.info.run_id, "KILLED"))
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
            self.trial_run_id = self.writer.write(writes.create_run(
                self.experiment_id, f"trial-{trial_id}",
                {ROLE: "trial", "mlflow.parentRunId": self.search_run_id, TRIAL_ID: trial_id, **retry, **(tags or {})}))
            self._next_step = 0
        self.writer.write(writes.log_batch(self.trial_run_id, params=_param_values(hparams)))
        self._watch(self.trial_run_id)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        if self.trial_run_id:
            self.writer.write(writes.log_batch(self.trial_run_id, metrics, step=epoch))
            self._next_step = epoch + 1

    def end_trial(self, status: str, metrics: Mapping[str, float], error: str | None = None) -> None:
        if not self.trial_run_id:
            return
        self.monitors.unwatch(self.trial_run_id)
        # After the last epoch, so MLflow's latest value of the metric is the final one.
        self.writer.write(writes.log_batch(self.trial_run_id, metrics, step=self._next_step,
                                           tags={ERROR: error[-MAX_TAG_VAL_LENGTH:]} if error else None))
        self.writer.write(writes.set_status(self.trial_run_id, status))
        self.trial_run_id = None

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        self.writer.write(writes.log_batch(self.search_run_id, metrics))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.writer.write(writes.log_artifact(self.search_run_id, path, artifact_path))

    def log_trial_artifact(self, path: str | Path) -> None:
        if self.trial_run_id:
            self.writer.write(writes.log_artifact(self.trial_run_id, path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        cut = {k: str(v)[:MAX_TAG_VAL_LENGTH] for k, v in tags.items()}
        self.writer.write(writes.log_batch(self.search_run_id, tags=cut))

    def log_dataset(self, name: str, digest: str, source: str, profile: Mapping[str, int]) -> None:
        """The data as an MLflow input of the search run (the UI's Datasets column), once per run."""
        self.writer.write(writes.log_dataset(self.search_run_id, name, digest, source, profile))

    def log_model(self, keras_path: Path, input_shape: tuple[int, int, int]) -> str | None:
        """Log the model as an MLflow pyfunc model of the search run; returns ``models:/<model id>``
        (None while the store is away: the sync logs it)."""
        self.model_id = self.writer.write(
            writes.log_model(self.experiment_id, self.search_run_id, keras_path, input_shape))
        return None if writes.is_offline(self.model_id) else f"models:/{self.model_id}"

    def register(self, val_auc: float, fingerprint: str) -> str | None:
        """Register the logged model (``logger.register_model``); ``champion`` moves if it is the best."""
        if not self.register_model:
            return None
        if self.model_id is None:
            log.warning("logger.register_model is set, but no model was logged (log_model): "
                        "nothing to register")
            return None
        return self.writer.write(writes.register(self.registered_model_name, self.model_id, self.search_run_id,
                                                 val_auc, fingerprint))

    def end_search(self, status: str, error: str | None = None) -> list[str]:
        self._reconnect()
        ended = []
        if self.trial_run_id:
            ended.append(f"trial run {self.trial_run_id}")
            self.end_trial(status, {})
        if self.search_run_id and self._owner:
            self.monitors.unwatch(self.search_run_id)
            if error:
                self.set_tags({ERROR: error})
            self.writer.write(writes.set_status(self.search_run_id, status))
            ended.append(f"search run {self.search_run_id}")
        return ended

    def send_unsent(self, folders: Iterable[Path]) -> None:
        """Send what earlier processes of this search kept while the store was away (on resume),
        so that their trials are in the store before this one counts and retries them."""
        self.writer.send_unsent(folders)

    def describe(self) -> str:
        store = self.tracking_uri
        # The UI opens on GenAI pages unless asked for the training runs.
        page = f"#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"
        if store.startswith(("http://", "https://")):
            where = f"MLflow UI: {store.rstrip('/')}/{page}"
        else:
            where = (f"MLflow UI: make ui, then open http://127.0.0.1:5000/{page}\n"
                     f"  (or: mlflow ui --backend-store-uri {store})")
        pending = self.writer.describe()
        return f"{where}\n{pending}" if pending else where

    def _reconnect(self) -> None:
        """Once the store is back, name the runs and model made while it was away by their ids in it."""
        ids = self.writer.reconnect()
        self.search_run_id, self.trial_run_id, self.model_id = (
            ids.get(r, r) if r else r for r in (self.search_run_id, self.trial_run_id, self.model_id))

    def _store_changed(self, offline: bool) -> None:
        """No system metrics while the store is away: each sample would fail."""
        if offline:
            self.monitors.store_lost()
        else:
            self.monitors.store_back()

    def _watch(self, run_id: str, resume: bool = False) -> None:
        if not self.offline and not writes.is_offline(run_id):
            self.monitors.watch(run_id, resume)

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


def _param_values(params: Mapping[str, Any]) -> dict[str, str]:
    """Param values as MLflow stores them: strings cut at its length limit."""
    return {k: str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in params.items()}
