"""Class names: IDC's layout calls its classes "0" and "1", and every model trained on it calls them
"no IDC" and "IDC"; such a model keeps IDC's predict CSV (``prob_idc``, a 0/1 label) and served output."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

IDC_CLASSES = ("0", "1")  # as the data names them (folder names, file names)
IDC_NAMES = ["no IDC", "IDC"]  # as its models, figures and predictions name them


def model_classes(classes: Sequence[str]) -> list[str]:
    """The class names a model of ``classes`` carries, in its output's order (prediction reads them there)."""
    return list(IDC_NAMES) if tuple(classes) == IDC_CLASSES else list(classes)


def idc_model(meta: Mapping[str, Any]) -> bool:
    """Whether a saved model's metadata names IDC's classes (a model with none is one of the first IDC models)."""
    return list(meta.get("classes", IDC_NAMES)) == IDC_NAMES
