"""A saved model carries what prediction needs besides its weights: image size, colour, threshold."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path

import keras

from histo_exp.files import written

META = "histo_exp.json"  # stored inside the .keras zip


def save_model(model: keras.Model, path: Path, meta: Mapping) -> Path:
    """Save the model and put ``meta`` (image size, colour, threshold) inside the .keras file: whole, or
    no file at all (a full disk left a truncated archive that ``predict`` misread)."""
    with written(path) as partial:
        model.save(partial)
        with zipfile.ZipFile(partial, "a") as z:
            z.writestr(META, json.dumps(dict(meta), indent=1))
    return path


def read_meta(path: str | Path) -> dict:
    """The metadata ``save_model`` stored, or {} for a .keras file from elsewhere."""
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read(META)) if META in z.namelist() else {}


def load_model(path: str | Path) -> tuple[keras.Model, dict]:
    """The model for inference (no optimizer state) and its metadata."""
    import histo_exp.model.augment  # noqa: F401  (registers histo_exp's Keras objects: input layers...)
    import histo_exp.model.cnn  # noqa: F401  (...and the AUC metric)

    return keras.models.load_model(path, compile=False), read_meta(path)
