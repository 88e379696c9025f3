"""Reading a tracking store (the predict and trials commands): models and trial runs, never a new store."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from histo_exp.errors import PathNotFound
from histo_exp.tracking.base import KERAS_RUN_ARTIFACT, MODEL_NAME, TRIAL_ID


def local_store(tracking_uri: str) -> Path | None:
    """The file (SQLite) or folder (a file store) a store on this machine is in; None for a server or database."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///"))
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    return Path(tracking_uri) if not parsed.scheme else None


def reader(tracking_uri: str | None) -> MlflowClient:
    """A client for reading an existing store: a SQLite file that is not there is an error, not
    a new empty store (a command that fails writes nothing)."""
    if not tracking_uri or tracking_uri == "None":
        raise PathNotFound("no MLflow store to look this up in (logger=none): pass a file, or drop logger=none "
                           "or pass tracking_uri=... to name the store")
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise PathNotFound(f"no MLflow store at {tracking_uri}: run from the folder the search ran in, "
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
        raise PathNotFound(
            f"model={ref!r} is neither a .keras file, nor a run in {tracking_uri}, nor an MLflow "
            "model URI (models:/<name>@<alias>, models:/<name>/<version>, models:/<model id>, "
            f"runs:/<run id>/{MODEL_NAME}); pass tracking_uri=... for another store"
        ) from err
    try:
        return Path(client.download_artifacts(ref, KERAS_RUN_ARTIFACT, str(folder)))
    except MlflowException:
        raise PathNotFound(
            f"run {ref} has no {KERAS_RUN_ARTIFACT} in {tracking_uri}: it is not a search run, or the store "
            "could not take the model when it ended (the run then said so and kept it in its output folder: "
            "`python -m histo_exp.sync folder=<that folder>` uploads it, or pass model=<that folder>/best_model.keras)"
        ) from None


def _download_pyfunc_keras(uri: str, tracking_uri: str, folder: Path) -> Path:
    """Download a logged pyfunc model and find the .keras file among its artifacts."""
    import mlflow.artifacts
    from mlflow.models import Model

    from histo_exp.tracking.pyfunc import KERAS_ARTIFACT

    try:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=_model_location(uri, tracking_uri), dst_path=str(folder), tracking_uri=tracking_uri))
        flavor = Model.load(str(local)).flavors.get("python_function", {})
    except Exception as err:
        raise PathNotFound(
            f"model={uri!r}: no MLflow model there in {tracking_uri} ({err}). Pass "
            "models:/<name>@<alias>, models:/<name>/<version>, models:/<model id>, "
            f"runs:/<search run id>/{MODEL_NAME} or a search run id (tracking_uri=... for another store)"
        ) from err
    keras_file = flavor.get("artifacts", {}).get(KERAS_ARTIFACT, {}).get("path")
    if not keras_file:
        raise PathNotFound(f"model={uri!r} is an MLflow model that histo_exp did not log "
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
    ready = [m for m in mine if m.status == LoggedModelStatus.READY]  # not one whose upload failed
    if not ready:
        raise MlflowException(f"run {run_id} logged no model named {name!r} (that finished uploading)")
    return max(ready, key=lambda m: m.creation_timestamp)


def trial_runs(run_id: str, tracking_uri: str) -> list[dict[str, Any]]:
    """The trial runs nested under a search run: trial id, status, params, final metrics (not the
    ``system/*`` ones, which describe the machine, not the trial)."""
    client = reader(tracking_uri)
    try:
        search = client.get_run(run_id)
    except Exception as err:
        raise PathNotFound(f"no run {run_id!r} in {tracking_uri} (pass tracking_uri=... for another store)") from err
    runs = client.search_runs([search.info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{run_id}'", max_results=10000)
    return [{"trial": r.data.tags.get(TRIAL_ID, r.info.run_name),
             "status": r.info.status, "params": r.data.params,
             "metrics": {k: v for k, v in r.data.metrics.items() if not k.startswith("system/")}}
            for r in runs]


