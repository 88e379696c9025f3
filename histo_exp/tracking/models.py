"""The search's model in MLflow: a pyfunc logged model (uint8 patches in, IDC probability out) and
registry versions under the alias ``champion``, the best validation AUC so far on the same data."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
from mlflow.entities import LoggedModelOutput
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from histo_exp import stack
from histo_exp.tracking.base import CHAMPION, FINGERPRINT, MODEL_NAME, VAL_AUC

log = logging.getLogger(__name__)



def log_pyfunc_model(client: MlflowClient, experiment_id: str, run_id: str, keras_path: Path,
                     input_shape: tuple[int, int, int]) -> str:
    """Log ``keras_path`` as a pyfunc LoggedModel of run ``run_id``; returns its model id.

    Built with MlflowClient calls, since ``mlflow.pyfunc.log_model`` needs the global tracking URI
    and (without an active run) files the model in the Default experiment. These URIs load and
    serve it (``mlflow models serve -m <uri>``): ``models:/<model id>``,
    ``runs:/<search run id>/idc_probability`` and, once registered, ``models:/<name>/<version>``
    and ``models:/<name>@champion``. Input: uint8 patches (N, H, W, C); output: the IDC
    probability, float32 (N,).
    """
    import keras
    import mlflow.pyfunc
    from mlflow.models import Model, ModelSignature
    from mlflow.types import Schema, TensorSpec

    import histo_exp
    from histo_exp.model.saving import read_meta
    from histo_exp.tracking.pyfunc import KERAS_ARTIFACT, IdcProbability, idc_only

    meta = read_meta(keras_path)
    output = (-1,) if idc_only(meta) else (-1, len(meta["classes"]))  # one probability per class but for IDC
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *input_shape))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), output)]))
    model = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id)
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
                mlflow_model=Model(artifact_path=model.artifact_location, run_id=run_id,
                                   model_uuid=model.model_id, model_id=model.model_id),
            )
            client.log_model_artifacts(model.model_id, str(local))
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    except BaseException:
        client.finalize_logged_model(model.model_id, "FAILED")
        raise
    client.finalize_logged_model(model.model_id, "READY")
    return model.model_id


def register_version(client: MlflowClient, name: str, model_id: str, run_id: str, val_auc: float,
                     fingerprint: str) -> str:
    """A new version of ``name`` from the logged model, tagged with its validation AUC and data;
    then the alias ``champion`` moves to it if it is the best so far (``crown``)."""
    if not client.search_registered_models(f"name = '{name}'"):
        with contextlib.suppress(MlflowException):  # created meanwhile by a parallel job
            client.create_registered_model(name)
    # The logged model's location, not models:/<id>: a SQLite registry resolves that id through
    # the global tracking URI, not this client's.
    source = client.get_logged_model(model_id).artifact_location
    version = client.create_model_version(name, source, run_id=run_id, model_id=model_id,
                                          tags={VAL_AUC: repr(float(val_auc)), FINGERPRINT: fingerprint})
    # Name the version on the logged model, as ``mlflow.register_model`` does (the UI shows it).
    tags = client.get_logged_model(model_id).tags
    linked = json.loads(tags.get(MLFLOW_MODEL_VERSIONS, "[]")) + [{"name": name, "version": str(version.version)}]
    client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(linked)})
    log.info("registered %s version %s (val_auc %.4f)", name, version.version, val_auc)
    crown(client, name, str(version.version), float(val_auc), fingerprint)
    return str(version.version)


def crown(client: MlflowClient, name: str, version: str, val_auc: float, fingerprint: str) -> None:
    """Move ``champion`` to ``version`` when no version holds it, or when the champion was trained
    on the same data and the new AUC is higher. AUCs on different data do not compare: when the
    champion was trained on other data, the newest data wins and the alias goes to its best version.
    Never chosen on test patients."""
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champ = None
    if champ is None:
        target, why = version, "no version held it"
    elif champ.tags.get(FINGERPRINT) == fingerprint:
        old = float(champ.tags.get(VAL_AUC, "-inf"))
        if not val_auc > old:
            log.info("alias %s stays on %s version %s: its val_auc %.4f is not below the new "
                     "version %s's %.4f on the same data", CHAMPION, name, champ.version, old, version, val_auc)
            return
        target = version
        why = f"val_auc {val_auc:.4f} beats version {champ.version}'s {old:.4f} on the same data"
    else:
        target, best = best_version(client, name, fingerprint, version, val_auc)
        why = (f"version {champ.version} was trained on other data "
               f"({champ.tags.get(FINGERPRINT, 'unknown')}); AUCs on different data do not compare, so "
               f"the alias goes to the best version on the newest data {fingerprint} (val_auc {best:.4f})")
    client.set_registered_model_alias(name, CHAMPION, target)
    log.info("alias %s -> %s version %s: %s", CHAMPION, name, target, why)


def best_version(client: MlflowClient, name: str, fingerprint: str, version: str,
                 val_auc: float) -> tuple[str, float]:
    """The registered version with the highest val_auc on ``fingerprint`` (newest on a tie)."""
    best = (val_auc, int(version))
    for mv in client.search_model_versions(f"name = '{name}'"):
        if mv.tags.get(FINGERPRINT) == fingerprint and VAL_AUC in mv.tags:
            best = max(best, (float(mv.tags[VAL_AUC]), int(mv.version)))
    return str(best[1]), best[0]


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

    backend = stack.BACKENDS.get(keras.backend.backend(), (keras.backend.backend(),))[0]
    return [f"{pkg}=={stack.version(pkg)}" for pkg in ("mlflow", "keras", backend, "numpy")]
