"""histo_exp: config-driven CNN hyperparameter search for histopathology patches."""

import importlib.util
import os

__version__ = "0.1.0"



def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# Keras picks TensorFlow unless told otherwise; an install with only jax (`histo_exp[jax-cuda]`) runs on it.
if "KERAS_BACKEND" not in os.environ and not _installed("tensorflow") and _installed("jax"):
    os.environ["KERAS_BACKEND"] = "jax"

# Before TensorFlow is first imported by any entry point: its C++ start-up chatter is noise here.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
