"""The original method's CNN: conv blocks, three Dense ReLU layers, a softmax over the classes (2: the original)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras

from histo_exp.errors import UsageError


@keras.saving.register_keras_serializable(package="histo_exp")
class IdcAUC(keras.metrics.AUC):
    """AUC-ROC of the IDC column of a 2-way softmax (plain ``AUC`` would pool both columns)."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true[:, 1], y_pred[:, 1], sample_weight=sample_weight)


def auc_metric(classes: int) -> keras.metrics.Metric:
    """The training AUC, named ``auc`` (the search's ``val_auc``): the IDC column's for 2 classes, else the
    mean of each class's one-vs-rest AUC (macro), as the evaluation reports it."""
    if classes == 2:
        return IdcAUC(name="auc")
    return keras.metrics.AUC(name="auc", multi_label=True, num_labels=classes)


def loss_for(classes: int) -> keras.losses.Loss:
    """Binary cross-entropy on the 2-way softmax (the original method's), categorical for more classes."""
    return keras.losses.BinaryCrossentropy() if classes == 2 else keras.losses.CategoricalCrossentropy()


def max_blocks(image_size: int) -> int:
    """The most 2x2 poolings an image of this size takes before its side would reach 0."""
    return int(math.floor(math.log2(image_size)))


def block_widths(blocks: int, filters: int, max_filters: int) -> list[int]:
    """Widths of the conv blocks: the first block's width, doubling per block, capped."""
    return [min(filters * 2**i, max_filters) for i in range(blocks)]


HEADS = ("flatten", "gap")


def conv_block(
    width: int, *, convs: int, kernel_size: int, activation: str, batch_norm: bool, dropout: float, dtype: str
) -> list[keras.layers.Layer]:
    """One block: ``convs`` convolutions ("same" padding), then 2x2 max pooling and dropout.

    With ``batch_norm`` each convolution is Conv2D (no activation, no bias: the normalization's
    offset takes its place) -> BatchNormalization -> Activation.
    """
    layers: list[keras.layers.Layer] = []
    for _ in range(convs):
        if batch_norm:
            layers += [
                keras.layers.Conv2D(width, kernel_size, padding="same", use_bias=False, dtype=dtype),
                keras.layers.BatchNormalization(dtype=dtype),
                keras.layers.Activation(activation, dtype=dtype),
            ]
        else:
            layers.append(
                keras.layers.Conv2D(width, kernel_size, activation=activation, padding="same", dtype=dtype)
            )
    return [*layers, keras.layers.MaxPooling2D(dtype=dtype), keras.layers.Dropout(dropout, dtype=dtype)]


def build_cnn(
    input_shape: Sequence[int],
    *,
    blocks: int,
    filters: int,
    max_filters: int = 512,
    kernel_size: int = 3,
    activation: str = "relu",
    dropout: float = 0.25,
    dense_units: Sequence[int] = (256, 128, 64),
    batch_norm: bool = False,
    head: str = "flatten",
    convs_per_block: int = 1,
    name: str = "cnn",
    dtype: str = "float32",
    classes: int = 2,
) -> keras.Model:
    """Build the uncompiled CNN; inputs are uint8-valued images, scaled to [0, 1] inside.

    The defaults are the original method's network. ``batch_norm`` puts a BatchNormalization
    between each convolution and its activation; ``head`` is ``flatten`` (the original) or
    ``gap`` (GlobalAveragePooling2D) before the Dense layers; ``convs_per_block`` stacks that
    many convolutions before each pooling (VGG style).

    ``dtype`` is a Keras dtype policy (``mixed_bfloat16`` for mixed precision); the softmax
    output (one column per class) stays float32 either way.
    """
    side = min(input_shape[0], input_shape[1])
    if not 1 <= blocks <= max_blocks(side):
        raise UsageError(
            f"model.blocks={blocks} does not fit {side}px images: each block halves the "
            f"side, so use 1..{max_blocks(side)} blocks or a larger data.image_size"
        )
    if head not in HEADS:
        raise UsageError(f"model.head must be one of {', '.join(HEADS)}; got {head!r}")
    if isinstance(convs_per_block, bool) or int(convs_per_block) != convs_per_block or convs_per_block < 1:
        raise UsageError(f"model.convs_per_block must be an integer >= 1; got {convs_per_block!r}")
    # KerasTuner's hp.Choice stores booleans as the ints 0 and 1 (bool is an int subclass).
    if batch_norm not in (False, True):
        raise UsageError(f"model.batch_norm must be true or false; got {batch_norm!r}")
    layers: list[keras.layers.Layer] = [
        keras.Input(shape=tuple(input_shape)),
        keras.layers.Rescaling(1.0 / 255, dtype=dtype),
    ]
    for width in block_widths(blocks, filters, max_filters):
        layers += conv_block(
            width,
            convs=int(convs_per_block),
            kernel_size=kernel_size,
            activation=activation,
            batch_norm=bool(batch_norm),
            dropout=dropout,
            dtype=dtype,
        )
    if head == "gap":
        layers.append(keras.layers.GlobalAveragePooling2D(dtype=dtype))
    else:
        layers.append(keras.layers.Flatten(dtype=dtype))
    layers += [keras.layers.Dense(units, activation="relu", dtype=dtype) for units in dense_units]
    layers.append(keras.layers.Dense(classes, activation="softmax", dtype="float32"))
    return keras.Sequential(layers, name=name)
