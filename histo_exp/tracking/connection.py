"""Opening a tracking store: a quick check that a server answers, MLflow's HTTP settings, and a lock
beside a new SQLite store so that parallel processes do not race to create it."""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from histo_exp.errors import Unreachable
from histo_exp.locks import lock_file

# How long a process waits for another to create the same SQLite store: creating the schema takes
# seconds, so only a process stuck while holding the lock makes anyone wait this long.
CREATION_WAIT_S = 300.0

# urllib3 warns at every HTTP retry of every request while a server is away: the tracker says it once instead.
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


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
        raise Unreachable(f"no MLflow server answers at logger.tracking_uri={tracking_uri} ({reason}): "
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
    return lock_file(db.with_name(f"{db.name}.lock"), f"creates the MLflow store {db}", timeout_s)


def http_settings(timeout_s: float, retries: int) -> None:
    """MLflow's HTTP timeout and retries for this process: its defaults (120 s, 7 retries with
    growing back-off) spend minutes on a server that is gone before a write is kept for later."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(timeout_s))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(int(retries))
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"


def open_experiment(tracking_uri: str, experiment_name: str,
                    artifact_location: str | None = None) -> tuple[MlflowClient, str]:
    """A client of the store and the id of ``experiment_name`` in it, made if it is not there yet."""
    with creation_lock(tracking_uri):
        client = MlflowClient(tracking_uri=tracking_uri)
        return client, _experiment(client, tracking_uri, experiment_name, artifact_location)


def _experiment(client: MlflowClient, tracking_uri: str, name: str, artifact_location: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    remote = tracking_uri.startswith(("http://", "https://"))
    # A server keeps artifacts where it was told to (--artifacts-destination).
    location = Path(artifact_location).absolute().as_uri() if artifact_location and not remote else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by a parallel job
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id
