"""The colour maths behind the augmentation layers (``histo_exp.model.augment``), as plain functions on
image tensors: RGB <-> haematoxylin/eosin/DAB stains, HSV saturation, luminance.

Apart from the layers so that each can be checked against its reference (skimage's HED transform,
``tf.image.adjust_saturation``, cv2's gray) without a layer, a seed or ``training`` in the way. Images
are float (batch, H, W, 3) with values 0..255; everything computes in float32 with ``keras.ops`` only,
so it runs on the TensorFlow and JAX backends alike.
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

# Ruifrok & Johnston's stain vectors, as skimage.color has them (rgb_from_hed): rows are the optical
# density of haematoxylin, eosin and DAB in R, G, B.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
# skimage scales optical density by -ln(1e-6), the density of its darkest pixel, so stains are ~0..1.
_FLOOR = 1e-6
_OD_SCALE = -math.log(_FLOOR)

# cv2's RGB -> gray weights (ITU-R BT.601), the ones data.color=gray decodes with.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _mix(x, matrix: np.ndarray):
    """``x @ matrix`` over the channel axis as multiply-adds: matmul may run in TF32 on GPUs, which would
    cost the HED round trip grey levels."""
    return sum(x[..., i : i + 1] * matrix[i].astype("float32") for i in range(matrix.shape[0]))


def rgb_to_hed(images):
    """RGB 0..255 -> haematoxylin, eosin, DAB in skimage's units (``skimage.color.rgb2hed``), except that
    stains are not clipped at 0, so that ``hed_to_rgb`` inverts it exactly."""
    rgb = ops.maximum(ops.cast(images, "float32") / 255.0, _FLOOR)
    return _mix(-ops.log(rgb) / _OD_SCALE, HED_FROM_RGB)


def hed_to_rgb(stains):
    """Haematoxylin, eosin, DAB (``rgb_to_hed``'s units) -> RGB clipped to 0..255, as skimage's hed2rgb."""
    od = _mix(ops.cast(stains, "float32"), RGB_FROM_HED) * _OD_SCALE
    return ops.clip(ops.exp(-od) * 255.0, 0.0, 255.0)


def saturate(images, gain):
    """Scale HSV saturation by ``gain`` (broadcast per image), capped at 1, keeping hue and value: the
    maths of ``tf.image.adjust_saturation`` done in RGB.

    Each channel sits ``(max - c) = max * S * t(hue)`` below the pixel's max, so scaling S scales that
    gap; no HSV round trip, which XLA compiles into a very slow kernel when ``gain`` is random.
    """
    r, g, b = images[..., 0:1], images[..., 1:2], images[..., 2:3]  # not ops.max: slow in XLA on CPU
    top = ops.maximum(ops.maximum(r, g), b)
    spread = top - ops.minimum(ops.minimum(r, g), b)  # saturation = spread / top
    ratio = ops.minimum(gain, top / ops.maximum(spread, 1e-6))  # new / old saturation, capped at 1
    return ops.clip(top - (top - images) * ratio, 0.0, 255.0)


def rgb_to_gray(images):
    """RGB -> one luminance channel (batch, H, W, 1) with cv2's weights (``GRAY_WEIGHTS``)."""
    return _mix(ops.cast(images, "float32"), np.array(GRAY_WEIGHTS)[:, None])
