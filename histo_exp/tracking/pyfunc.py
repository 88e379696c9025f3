"""The MLflow pyfunc face of a saved model: uint8 patches in, IDC probabilities out.

``mlflow models serve`` and ``mlflow.pyfunc.load_model`` use it; ``histo_exp.tracking.models`` logs it.
"""

import os
from typing import Any

import mlflow.pyfunc
import numpy as np

KERAS_ARTIFACT = "keras_model"  # the key of the .keras file in the pyfunc model's artifacts


class IdcProbability(mlflow.pyfunc.PythonModel):
    """The .keras model as an MLflow pyfunc model, for ``mlflow models serve`` and ``pyfunc.load_model``."""

    def __init__(self, backend: str = "tensorflow"):
        self.backend = backend  # the Keras backend it was trained on, which its requirements install

    def load_context(self, context: Any) -> None:
        """Load the .keras file without its optimizer: scoring never trains."""
        os.environ.setdefault("KERAS_BACKEND", self.backend)  # before the first import of keras
        from histo_exp.model.saving import load_model

        self.model, _ = load_model(context.artifacts[KERAS_ARTIFACT])

    # np.ndarray is a hint MLflow accepts without deriving a schema from it: the logged signature rules.
    def predict(self, context: Any, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        """The IDC-class probability of each patch of a uint8 (N, H, W, C) batch, float32 (N,)."""
        x = np.asarray(model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input)
        shape = tuple(self.model.input_shape[1:])
        if x.shape[1:] != shape:  # a table or list of flattened patches
            x = x.reshape((-1, *shape))
        return np.asarray(self.model.predict(x, verbose=0))[:, 1].astype(np.float32)
