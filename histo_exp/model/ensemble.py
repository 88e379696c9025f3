"""Models that average: test-time augmentation over the 8 dihedral views, and ensembles of models.

Both are plain functional models, so they save and load like any other (``model.saving``).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from histo_exp.errors import UsageError
from histo_exp.model.augment import Dihedral


def _input_like(model: keras.Model, name: str) -> keras.KerasTensor:
    if len(model.inputs) != 1:
        raise UsageError(f"{model.name} takes {len(model.inputs)} inputs; only single-input models average")
    return keras.Input(shape=tuple(model.inputs[0].shape[1:]), dtype=model.inputs[0].dtype, name=name)


def with_tta(model: keras.Model) -> keras.Model:
    """The mean of ``model``'s softmax over the 8 flips/turns of each patch (one model, shared weights).

    Tissue has no orientation, so the views are equally valid; averaging them steadies the prediction.
    """
    inputs = _input_like(model, "images")
    views = [model(Dihedral(k, name=f"dihedral_{k}")(inputs)) for k in range(8)]
    outputs = keras.layers.Average(dtype="float32", name="tta_mean")(views)
    return keras.Model(inputs, outputs, name=f"{model.name}_tta")


def average_models(models: Sequence[keras.Model], name: str = "ensemble") -> keras.Model:
    """One model whose output is the mean of the members' (batch, 2) outputs, on the same input.

    Each member is wrapped in a model of its own name (``member_<i>``), so members that share names
    (e.g. several saved ``cnn`` models loaded back) keep apart in the saved file; the members
    themselves are used as they are, not copied or renamed.
    """
    if not models:
        raise ValueError("average_models needs at least one model")
    shapes = {tuple(m.inputs[0].shape[1:]) for m in models}
    if len(shapes) != 1:
        raise UsageError(f"ensemble members take different input shapes: {sorted(shapes)}")
    inputs = _input_like(models[0], "images")
    outputs = []
    for i, member in enumerate(models):
        member_inputs = _input_like(member, f"member_{i}_images")
        wrapped = keras.Model(member_inputs, member(member_inputs), name=f"member_{i}")
        outputs.append(wrapped(inputs))
    if len(outputs) == 1:
        mean = keras.layers.Activation("linear", dtype="float32", name="mean")(outputs[0])
    else:
        mean = keras.layers.Average(dtype="float32", name="mean")(outputs)
    return keras.Model(inputs, mean, name=name)
