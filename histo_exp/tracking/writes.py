"""Every write the MLflow tracker makes, as a JSON-able record: applied to the store at once, or kept
(``spool``) while the store is away and applied later. One ``apply`` serves both, so a replayed
write lands exactly as it would have. A write names the file it uploads by its absolute path; the spool
names it relative to the output folder when it keeps it (``Spool.located`` finds it again)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_DATASET_DIGEST_SIZE

Write = dict[str, Any]
OFFLINE = "offline-"  # the id of a run or model made while the store was away, until a sync makes it
ARTIFACTS = ("log_artifact", "log_text", "log_model")  # writes that go to the artifact store
FILES = {"log_artifact": "path", "log_model": "keras_path"}  # writes that upload a file: the key of its path
# Writes whose repeat would make a second thing (a run, a model version): a stop waits until one is sent
# and counted. Any other write may be cut short, and is sent again whole: the store keeps it once.
MAKES = ("create_run", "register")


def offline_id() -> str:
    return f"{OFFLINE}{uuid.uuid4().hex}"


def is_offline(ref: str | None) -> bool:
    return bool(ref) and ref.startswith(OFFLINE)


def now_ms() -> int:
    return int(time.time() * 1000)


def create_run(experiment_id: str, run_name: str, tags: Mapping[str, str]) -> Write:
    return {"op": "create_run", "id": offline_id(), "experiment_id": experiment_id, "run_name": run_name,
            "tags": dict(tags), "start_time": now_ms()}


def log_batch(run: str, metrics: Mapping[str, float | None] | None = None, step: int = 0,
              params: Mapping[str, str] | None = None, tags: Mapping[str, str] | None = None) -> Write:
    """Metrics keep the time they were measured at, however late they are sent."""
    ts = now_ms()
    return {"op": "log_batch", "run": run,
            "metrics": [[k, float(v), ts, step] for k, v in (metrics or {}).items() if v is not None],
            "params": [[k, v] for k, v in (params or {}).items()],
            "tags": [[k, v] for k, v in (tags or {}).items()]}


def set_status(run: str, status: str, ended: bool = True) -> Write:
    """End a run with ``status`` (``ended=False``: reopen it, e.g. RUNNING on resume)."""
    return {"op": "set_status", "run": run, "status": status, "end_time": now_ms() if ended else None}


def log_artifact(run: str, path: str | Path, artifact_path: str | None = None) -> Write:
    return {"op": "log_artifact", "run": run, "path": str(Path(path).absolute()), "artifact_path": artifact_path}


def log_text(run: str, text: str, artifact_file: str) -> Write:
    return {"op": "log_text", "run": run, "text": text, "artifact_file": artifact_file}


def log_dataset(run: str, name: str, digest: str, source: str, profile: Mapping[str, int]) -> Write:
    return {"op": "log_dataset", "run": run, "name": name, "digest": digest, "source": source,
            "profile": dict(profile)}


def log_model(experiment_id: str, run: str, keras_path: Path, input_shape: tuple[int, ...]) -> Write:
    return {"op": "log_model", "id": offline_id(), "experiment_id": experiment_id, "run": run,
            "keras_path": str(Path(keras_path).absolute()), "input_shape": list(input_shape)}


def register(name: str, model: str, run: str, val_auc: float, fingerprint: str) -> Write:
    return {"op": "register", "name": name, "model": model, "run": run, "val_auc": float(val_auc),
            "fingerprint": fingerprint}


def close_orphan(run: str, tags: Mapping[str, str]) -> Write:
    """End ``run`` KILLED, with ``tags`` saying why, if the store still has it RUNNING when this is sent:
    its process ended without closing it (a sync of what that process kept adds this)."""
    return {"op": "close_orphan", "run": run, "status": "KILLED", "tags": dict(tags), "end_time": now_ms()}


def refers_offline(write: Write) -> bool:
    """Whether ``write`` names a run or model that only exists once the spool is sent."""
    return any(is_offline(write.get(key)) for key in ("run", "model")) or is_offline(
        write.get("tags", {}).get(MLFLOW_PARENT_RUN_ID) if write["op"] == "create_run" else None)


def apply(client: MlflowClient, write: Write, ids: Mapping[str, str] | None = None) -> str | None:
    """Carry ``write`` out on ``client``'s store; offline ids are first swapped for the ones ``ids``
    maps them to. Returns the id a ``create_run`` or ``log_model`` made, the version a ``register``
    made, else None."""
    ids = ids or {}
    w = {k: ids.get(v, v) if k in ("run", "model") and isinstance(v, str) else v for k, v in write.items()}
    return APPLY[w["op"]](client, w, ids)


def _create_run(client: MlflowClient, w: Write, ids: Mapping[str, str]) -> str:
    tags = {k: ids.get(v, v) if k == MLFLOW_PARENT_RUN_ID else v for k, v in w["tags"].items()}
    return client.create_run(w["experiment_id"], start_time=w["start_time"], tags=tags,
                             run_name=w["run_name"]).info.run_id


def _log_batch(client: MlflowClient, w: Write, ids: Mapping[str, str]) -> None:
    # MlflowClient.log_batch splits long lists into the batch sizes the store accepts.
    client.log_batch(w["run"], metrics=[Metric(*m) for m in w["metrics"]],
                     params=[Param(k, v) for k, v in w["params"]], tags=[RunTag(k, v) for k, v in w["tags"]])


def _set_status(client: MlflowClient, w: Write, ids: Mapping[str, str]) -> None:
    if w["end_time"] is None:
        client.update_run(w["run"], status=w["status"])
    else:
        client.set_terminated(w["run"], status=w["status"], end_time=w["end_time"])


def _close_orphan(client: MlflowClient, w: Write, ids: Mapping[str, str]) -> str | None:
    """The status it set, or None when the run was closed meanwhile (a later process reopened and ended it)."""
    if client.get_run(w["run"]).info.status != "RUNNING":
        return None
    client.log_batch(w["run"], tags=[RunTag(k, v) for k, v in w["tags"].items()])
    client.set_terminated(w["run"], status=w["status"], end_time=w["end_time"])
    return w["status"]


def _log_artifact(client: MlflowClient, w: Write, ids: Mapping[str, str]) -> None:
    client.log_artifact(w["run"], w["path"], w["artifact_path"])


def _log_text(client: MlflowClient, w: Write, ids: Mapping[str, str]) -> None:
    client.log_text(w["run"], w["text"], w["artifact_file"])


def _log_dataset(client: MlflowClient, w: Write, ids: Mapping[str, str]) -> None:
    """The data as an MLflow input of the run (the UI's Datasets column), once per run.

    ``digest`` is the data cache fingerprint, ``source`` the data root, ``profile`` the patch and
    patient counts per split. MLflow keeps one dataset per name and digest in an experiment, so a
    resumed run (or another run on the same data) adds no duplicate.
    """
    short = w["digest"][:MAX_DATASET_DIGEST_SIZE]
    run = client.get_run(w["run"])
    if any(d.dataset.name == w["name"] and d.dataset.digest == short for d in run.inputs.dataset_inputs):
        return
    profile = {**w["profile"], **({"fingerprint": w["digest"]} if short != w["digest"] else {})}
    dataset = Dataset(name=w["name"], digest=short, source_type="local", source=json.dumps({"uri": w["source"]}),
                      profile=json.dumps(profile))
    inputs = [DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])]
    try:
        client.log_inputs(w["run"], inputs)
    except MlflowException as error:
        # Parallel searches on the same data (a multirun's launcher) race to insert the one
        # dataset row; the loser's retry finds that row and only links it to its run.
        if "UNIQUE constraint" not in str(error) and "IntegrityError" not in str(error):
            raise
        client.log_inputs(w["run"], inputs)


def _log_model(client: MlflowClient, w: Write, ids: Mapping[str, str]) -> str:
    from histo_exp.tracking.models import log_pyfunc_model

    return log_pyfunc_model(client, w["experiment_id"], w["run"], Path(w["keras_path"]), tuple(w["input_shape"]))


def _register(client: MlflowClient, w: Write, ids: Mapping[str, str]) -> str:
    from histo_exp.tracking.models import register_version

    return register_version(client, w["name"], w["model"], w["run"], w["val_auc"], w["fingerprint"])


APPLY = {"create_run": _create_run, "log_batch": _log_batch, "set_status": _set_status,
         "log_artifact": _log_artifact, "log_text": _log_text, "log_dataset": _log_dataset,
         "log_model": _log_model, "register": _register, "close_orphan": _close_orphan}
