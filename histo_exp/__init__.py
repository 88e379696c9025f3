"""histo_exp: config-driven CNN hyperparameter search for histopathology patches."""

import os

__version__ = "0.1.0"

# Before TensorFlow is first imported by any entry point: its C++ start-up chatter is noise here.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
