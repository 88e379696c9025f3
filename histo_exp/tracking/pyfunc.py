"""The MLflow pyfunc face of a saved model: uint8 patches in, IDC probabilities out (IDC's models), or one
probability per class in the model's class order (any other model).

``mlflow models serve`` and ``mlflow.pyfunc.load_model`` use it; ``histo_exp.tracking.models`` logs it.
"""

import os
from typing import Any

import mlflow.pyfunc
import numpy as np

from histo_exp.classes import idc_model

KERAS_ARTIFACT = "keras_model"  # the key of the .keras file in the pyfunc model's artifacts


def idc_only(meta: dict) -> bool:
    """Whether the model serves IDC's one probability (its classes, from its metadata; none: an IDC model)."""
    return idc_model(meta)


class IdcProbability(mlflow.pyfunc.PythonModel):
    """The .keras model as an MLflow pyfunc model, for ``mlflow models serve`` and ``pyfunc.load_model``."""

    def __init__(self, backend: str = "tensorflow"):
        self.backend = backend  # the Keras backend it was trained on, which its requirements install

    def load_context(self, context: Any) -> None:
        """Load the .keras file without its optimizer: scoring never trains."""
        os.environ.setdefault("KERAS_BACKEND", self.backend)  # before the first import of keras
        from histo_exp.model.saving import load_model

        self.model, meta = load_model(context.artifacts[KERAS_ARTIFACT])
        self.idc = idc_only(meta)

    # np.ndarray is a hint MLflow accepts without deriving a schema from it: the logged signature rules.
    def predict(self, context: Any, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        """The IDC-class probability of each patch of a uint8 (N, H, W, C) batch, float32 (N,); a non-IDC
        model's every class's, float32 (N, classes)."""
        x = np.asarray(model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input)
        shape = tuple(self.model.input_shape[1:])
        if x.shape[1:] != shape:  # a table or list of flattened patches
            x = x.reshape((-1, *shape))
        prob = np.asarray(self.model.predict(x, verbose=0))
        return (prob[:, 1] if self.idc else prob).astype(np.float32)
