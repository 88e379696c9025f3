"""Experiment tracking: one MLflow run per search, one nested run per KerasTuner trial.

The only module that knows MLflow. ``NullTracker`` (``logger=none``) has the same methods
and records nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

ROLE = "histo_exp.role"
ERROR = "histo_exp.error"
TRIAL_ID = "histo_exp.trial_id"
RETRY_OF = "histo_exp.retry_of"  # on a trial run: the earlier, interrupted runs of the same trial
RESUMED = "histo_exp.resumed"    # on a search run: how many times it was resumed
PER_LAUNCH = ("paths.output_dir", "tuner.distributed.")  # differ at every launch: not worth a warning
MAX_TAG = 5000


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


def download_model(run_id: str, tracking_uri: str, folder: Path) -> Path:
    """The best model a search run logged (``model/best_model.keras``), fetched into ``folder``."""
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.get_run(run_id)
    except Exception as err:
        raise FileNotFoundError(
            f"model={run_id!r} is neither a .keras file nor a run in {tracking_uri} "
            "(pass tracking_uri=... for another store)"
        ) from err
    return Path(client.download_artifacts(run_id, "model/best_model.keras", str(folder)))


def trial_runs(run_id: str, tracking_uri: str) -> list[dict[str, Any]]:
    """The trial runs nested under a search run: trial id, status, params, final metrics."""
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        search = client.get_run(run_id)
    except Exception as err:
        raise FileNotFoundError(f"no run {run_id!r} in {tracking_uri} (pass --tracking-uri)") from err
    runs = client.search_runs([search.info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{run_id}'", max_results=10000)
    return [{"trial": r.data.tags.get(TRIAL_ID, r.info.run_name),
             "status": r.info.status, "params": r.data.params, "metrics": r.data.metrics}
            for r in runs]


class NullTracker:
    """Records nothing (``logger=none``)."""

    search_run_id: str | None = None
    tracking_uri: str | None = None

    def start_search(self, params: Mapping[str, Any], config_yaml: str, run_name: str,
                     tags: Mapping[str, str] | None = None, resume: str | None = None) -> None: ...
    def join_search(self, run_id: str) -> None: ...
    def is_running(self, run_id: str) -> bool:
        return False
    def start_trial(self, trial_id: str, hparams: Mapping[str, Any],
                    tags: Mapping[str, str] | None = None) -> None: ...
    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None: ...
    def end_trial(self, status: str, metrics: Mapping[str, float], error: str | None = None) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float]) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_trial_artifact(self, path: str | Path) -> None: ...
    def register(self, artifact_path: str) -> str | None: ...
    def end_search(self, status: str) -> None: ...

    def describe(self) -> str:
        return "tracking is off (logger=none)"


class MlflowTracker(NullTracker):
    """Logs through ``MlflowClient`` with explicit run ids, so nothing depends on a global run."""

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: str | None = None,
                 register_model: bool = False, registered_model_name: str = "histo_exp"):
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.register_model = register_model
        self.registered_model_name = registered_model_name
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._experiment(artifact_location)
        self.search_run_id: str | None = None
        self.trial_run_id: str | None = None
        self._owner = False

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

    def _reopen(self, run: Any, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        self.search_run_id = run.info.run_id
        self._owner = True
        self.client.update_run(self.search_run_id, status="RUNNING")
        resumed = int(run.data.tags.get(RESUMED, "0")) + 1
        for key, value in {**tags, RESUMED: str(resumed)}.items():
            self.client.set_tag(self.search_run_id, key, value)
        old = run.data.params
        new = {k: str(v)[:6000] for k, v in params.items()}
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
        self.client.log_batch(self.trial_run_id, params=[Param(k, str(v)) for k, v in hparams.items()])

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        if self.trial_run_id:
            self._log(self.trial_run_id, metrics, step=epoch)
            self._next_step = epoch + 1

    def end_trial(self, status: str, metrics: Mapping[str, float], error: str | None = None) -> None:
        if not self.trial_run_id:
            return
        if metrics:
            # After the last epoch, so MLflow's latest value of the metric is the final one.
            self._log(self.trial_run_id, metrics, step=self._next_step)
        if error:
            self.client.set_tag(self.trial_run_id, ERROR, error[-MAX_TAG:])
        self.client.set_terminated(self.trial_run_id, status=status)
        self.trial_run_id = None

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        self._log(self.search_run_id, metrics)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.search_run_id, str(path), artifact_path)

    def log_trial_artifact(self, path: str | Path) -> None:
        if self.trial_run_id:
            self.client.log_artifact(self.trial_run_id, str(path))

    def register(self, artifact_path: str) -> str | None:
        """Add the search run's model to the model registry when ``logger.register_model``."""
        if not self.register_model:
            return None
        name = self.registered_model_name
        if not self.client.search_registered_models(f"name = '{name}'"):
            self.client.create_registered_model(name)
        source = f"{self.client.get_run(self.search_run_id).info.artifact_uri}/{artifact_path}"
        version = self.client.create_model_version(name, source, run_id=self.search_run_id)
        log.info("registered %s version %s", name, version.version)
        return version.version

    def end_search(self, status: str) -> None:
        if self.trial_run_id:
            self.end_trial(status, {})
        if self.search_run_id and self._owner:
            self.client.set_terminated(self.search_run_id, status=status)

    def describe(self) -> str:
        store = self.tracking_uri
        # The UI opens on GenAI pages unless asked for the training runs.
        page = f"#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"
        if store.startswith(("http://", "https://")):
            return f"MLflow UI: {store.rstrip('/')}/{page}"
        return (f"MLflow UI: make ui, then open http://127.0.0.1:5000/{page}\n"
                f"  (or: mlflow ui --backend-store-uri {store})")

    def _run(self, run_id: str) -> Any:
        try:
            return self.client.get_run(run_id)
        except Exception:  # MlflowException: no such run in this store
            return None

    def _log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.search_run_id, params=items[i : i + 100])

    def _log(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        self.client.log_batch(run_id, metrics=batch)
