"""The original method's CNN: conv blocks, three Dense ReLU layers, a 2-way softmax."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras


@keras.saving.register_keras_serializable(package="histo_exp")
class IdcAUC(keras.metrics.AUC):
    """AUC-ROC of the IDC column of a 2-way softmax (plain ``AUC`` would pool both columns)."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true[:, 1], y_pred[:, 1], sample_weight=sample_weight)


def max_blocks(image_size: int) -> int:
    """The most 2x2 poolings an image of this size takes before its side would reach 0."""
    return int(math.floor(math.log2(image_size)))


def block_widths(blocks: int, filters: int, max_filters: int) -> list[int]:
    """Widths of the conv blocks: the first block's width, doubling per block, capped."""
    return [min(filters * 2**i, max_filters) for i in range(blocks)]


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
    name: str = "cnn",
    dtype: str = "float32",
) -> keras.Model:
    """Build the uncompiled CNN; inputs are uint8-valued images, scaled to [0, 1] inside.

    ``dtype`` is a Keras dtype policy (``mixed_bfloat16`` for mixed precision); the softmax
    output stays float32 either way.
    """
    side = min(input_shape[0], input_shape[1])
    if not 1 <= blocks <= max_blocks(side):
        raise ValueError(
            f"model.blocks={blocks} does not fit {side}px images: each block halves the "
            f"side, so use 1..{max_blocks(side)} blocks or a larger data.image_size"
        )
    layers: list[keras.layers.Layer] = [
        keras.Input(shape=tuple(input_shape)),
        keras.layers.Rescaling(1.0 / 255, dtype=dtype),
    ]
    for width in block_widths(blocks, filters, max_filters):
        layers += [
            keras.layers.Conv2D(width, kernel_size, activation=activation, padding="same", dtype=dtype),
            keras.layers.MaxPooling2D(dtype=dtype),
            keras.layers.Dropout(dropout, dtype=dtype),
        ]
    layers.append(keras.layers.Flatten(dtype=dtype))
    layers += [keras.layers.Dense(units, activation="relu", dtype=dtype) for units in dense_units]
    layers.append(keras.layers.Dense(2, activation="softmax", dtype="float32"))
    return keras.Sequential(layers, name=name)
