"""histo_exp: config-driven CNN hyperparameter search for histopathology patches."""

__version__ = "0.1.0"
