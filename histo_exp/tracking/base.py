"""What every tracker does, and the names of what it records; the MLflow-free half of tracking."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from histo_exp.errors import HistoExpError
from histo_exp.signals import stopping

log = logging.getLogger(__name__)

ROLE = "histo_exp.role"
ERROR = "histo_exp.error"
TRIAL_ID = "histo_exp.trial_id"
RETRY_OF = "histo_exp.retry_of"  # on a trial run: the earlier, interrupted runs of the same trial
FINAL_MODEL = "histo_exp.kept"   # on a search run: the model it ended with, and which one the test metrics belong to
RESUMED = "histo_exp.resumed"    # on a search run: how many times it was resumed
VAL_AUC = "histo_exp.val_auc"    # on a registered model version
FINGERPRINT = "histo_exp.data_fingerprint"  # on a registered model version
MODEL_NAME = "idc_probability"   # the pyfunc logged model: runs:/<search run>/idc_probability
CHAMPION = "champion"            # the registry alias of the best version so far
KERAS_RUN_ARTIFACT = "model/best_model.keras"  # what the runner logs on the search run


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

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Tag the search run."""

    def log_model(self, keras_path: Path, input_shape: tuple[int, int, int]) -> str | None:
        """Record the best model as a servable model; its URI, or None when nothing is recorded."""
        return None

    def register(self, val_auc: float, fingerprint: str) -> str | None:
        """Add the logged model to the registry; the new version, or None."""
        return None

    def end_search(self, status: str, error: str | None = None) -> list[str]:
        """Close the open runs with ``status`` (and ``error``, why the search failed); the runs it closed, in words."""
        return []

    def send_unsent(self, folders: Iterable[Path]) -> None:
        """Send what earlier runs in ``folders`` kept while the store was away."""

    def describe(self) -> str:
        """Where to look at what was recorded."""
        return "tracking is off (logger=none)"


class NullTracker(Tracker):
    """Records nothing (``logger=none``)."""


@contextlib.contextmanager
def ending_runs(tracker: Tracker) -> Iterator[None]:
    """End the open runs FINISHED, KILLED (Ctrl-C) or FAILED, whichever way the block ends; metrics logged
    before a failure stay on the run."""
    status, error = "FAILED", None
    try:
        yield
        status = "FINISHED"
    except KeyboardInterrupt:
        stopping()  # cleaning up now: the stop reached here, safe points let the runs be closed
        status = "KILLED"
        raise
    except HistoExpError as err:  # said in one line: the same line on the run (a full disk, no trial kept)
        error = str(err)
        raise
    finally:
        ended = tracker.end_search(status, error)
        if status == "KILLED":
            log.warning("marked KILLED in MLflow: %s", " and ".join(ended) if ended else "no run was open")


