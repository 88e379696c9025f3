"""Augmentation as Keras layers at the model's input (random ones for training, fixed dihedral views for
test-time augmentation) and ``input_layers``, which picks them; their colour maths is in ``colour.py``.

Images are float (batch, H, W, 3) with values 0..255 (square for the 90-degree turns). The random layers
change images only when called with ``training=True`` (``model.fit``); ``model.predict``, ``evaluate``
and a plain ``layer(x)`` pass images through. All layers compute in float32 whatever the global dtype
policy, so they sit unchanged in front of a ``mixed_bfloat16`` model. Only ``keras.ops`` and
``keras.random`` are used, so they run inside ``fit`` on the TensorFlow and JAX backends alike.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from histo_exp.errors import UsageError
from histo_exp.model.colour import hed_to_rgb, rgb_to_gray, rgb_to_hed, saturate


def dihedral(images, transpose, flip_v, flip_h):
    """One element of the dihedral group per image: transpose H and W, then flip rows, then columns.

    Each of ``transpose``, ``flip_v``, ``flip_h`` is a Python bool (the same for all images; only what
    it asks for is computed) or a boolean tensor of shape (batch,) that chooses per image; the 8
    combinations are the 8 elements, so pixels move without interpolation.
    """

    def apply(condition, move, x):
        if isinstance(condition, (bool, np.bool_)):
            return move(x) if condition else x
        return ops.where(ops.reshape(condition, (-1, 1, 1, 1)), move(x), x)

    images = apply(transpose, lambda x: ops.transpose(x, (0, 2, 1, 3)), images)
    images = apply(flip_v, lambda x: ops.flip(x, axis=1), images)
    return apply(flip_h, lambda x: ops.flip(x, axis=2), images)


# Dihedral(k): np.rot90(x, k % 4, axes=(1, 2)), flipped left-right when k >= 4; (transpose, flip_v, flip_h).
_ELEMENTS = [(False, False, False), (True, True, False), (False, True, True), (True, False, True),
             (False, False, True), (True, True, True), (False, True, False), (True, False, False)]


class _Float32Layer(keras.layers.Layer):
    """Computes in float32 whatever the global dtype policy: colour maths in bfloat16 loses grey levels."""

    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, "dtype": "float32"})


class _RandomLayer(_Float32Layer):
    """A random augmentation: changes images only when ``training`` is True, from its own seed."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        return self.augment(inputs) if training else inputs

    def augment(self, images):
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="histo_exp")
class RandomDihedral(_RandomLayer):
    """Per image a random left-right flip and/or a random 90-degree turn: tissue has no orientation.

    With both, each image gets one of the 8 dihedral elements with equal chance; ``rotate90`` alone picks
    one of the 4 turns; ``flip`` alone flips half the images left-right.
    """

    def __init__(self, flip: bool = True, rotate90: bool = True, seed: int | None = None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.flip = bool(flip)
        self.rotate90 = bool(rotate90)

    def build(self, input_shape):
        if self.rotate90 and input_shape[1] != input_shape[2]:
            raise UsageError(f"RandomDihedral turns only square images; got shape {tuple(input_shape)}")
        super().build(input_shape)

    def augment(self, images):
        if not (self.flip or self.rotate90):
            return images
        bits = keras.random.uniform((ops.shape(images)[0], 3), seed=self.seed_generator) < 0.5
        transpose, flip_v, flip_h = bits[:, 0], bits[:, 1], bits[:, 2]
        if not self.rotate90:
            return dihedral(images, False, False, flip_h)
        if not self.flip:  # the turns are the elements with an even number of moves
            return dihedral(images, transpose, flip_v, ops.not_equal(transpose, flip_v))
        return dihedral(images, transpose, flip_v, flip_h)

    def get_config(self) -> dict:
        return {**super().get_config(), "flip": self.flip, "rotate90": self.rotate90}


@keras.saving.register_keras_serializable(package="histo_exp")
class Dihedral(_Float32Layer):
    """One fixed dihedral element, in training and inference alike: a view for test-time augmentation.

    ``k`` in 0..7: ``np.rot90(x, k % 4, axes=(1, 2))``, then flipped left-right when ``k >= 4``.
    """

    def __init__(self, k: int, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= int(k) <= 7:
            raise UsageError(f"Dihedral k is 0..7, got {k}")
        self.k = int(k)

    def call(self, inputs):
        return dihedral(inputs, *_ELEMENTS[self.k])

    def compute_output_shape(self, input_shape):
        if _ELEMENTS[self.k][0]:
            return (input_shape[0], input_shape[2], input_shape[1], *input_shape[3:])
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "k": self.k}


@keras.saving.register_keras_serializable(package="histo_exp")
class HEDJitter(_RandomLayer):
    """Tellez et al. 2019 stain augmentation: per image and per stain (haematoxylin, eosin, DAB), the
    concentration ``s`` (``rgb_to_hed``) becomes ``s * U(1 - scale, 1 + scale) + U(-shift, shift)``.

    Mimics the spread of staining between labs and scanners, which plain RGB jitter does not follow.
    Stain units are skimage's: a haematoxylin shift of +0.05 turns white into about (163, 157, 209).
    """

    def __init__(self, scale: float = 0.05, shift: float = 0.05, seed: int | None = None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.scale = float(scale)
        self.shift = float(shift)

    def augment(self, images):
        shape = (ops.shape(images)[0], 1, 1, 3)
        alpha = keras.random.uniform(shape, 1.0 - self.scale, 1.0 + self.scale, seed=self.seed_generator)
        beta = keras.random.uniform(shape, -self.shift, self.shift, seed=self.seed_generator)
        return hed_to_rgb(rgb_to_hed(images) * alpha + beta)

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": self.scale, "shift": self.shift}


@keras.saving.register_keras_serializable(package="histo_exp")
class RandomSaturation(_RandomLayer):
    """HSV saturation times ``U(1 - factor, 1 + factor)`` per image, capped at 1 (``saturate``).

    Keras's RandomSaturation clips the saturation to ``value_range``, so with (0, 255) a saturated
    pixel goes negative (e.g. -25 for pure red at factor 1.1).
    """

    def __init__(self, factor: float, seed: int | None = None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if not 0.0 <= factor <= 1.0:
            raise UsageError(f"saturation factor is 0..1, got {factor}")
        self.factor = float(factor)

    def augment(self, images):
        shape = (ops.shape(images)[0], 1, 1, 1)
        gain = keras.random.uniform(shape, 1.0 - self.factor, 1.0 + self.factor, seed=self.seed_generator)
        return saturate(images, gain)

    def get_config(self) -> dict:
        return {**super().get_config(), "factor": self.factor}


class _KerasColourLayer:
    """Keras's colour layers, computing in float32 and inactive unless ``training`` is True (theirs
    default to training when nothing says, e.g. a plain ``model(x)``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "dtype": "float32"})

    def call(self, data, training=None):
        return super().call(data, training=bool(training))


@keras.saving.register_keras_serializable(package="histo_exp")
class RandomBrightness(_KerasColourLayer, keras.layers.RandomBrightness):
    """Adds ``U(-factor, factor) * 255`` to every pixel of an image, clipped to 0..255."""


@keras.saving.register_keras_serializable(package="histo_exp")
class RandomContrast(_KerasColourLayer, keras.layers.RandomContrast):
    """Scales each channel's distance from its mean by ``U(1 - lower, 1 + upper)``; pass ``(c, c)``:
    Keras reads a single number ``c`` as ``(0, c)``, which only ever raises contrast."""


@keras.saving.register_keras_serializable(package="histo_exp")
class RandomHue(_KerasColourLayer, keras.layers.RandomHue):
    """Turns the hue by ``U(-factor / 2, factor / 2)`` of a full turn."""


@keras.saving.register_keras_serializable(package="histo_exp")
class ToGray(_Float32Layer):
    """RGB -> one luminance channel with cv2's weights, in training and inference alike: with
    ``data.color=gray`` colour augmentation happens in RGB and this makes the image the network sees."""

    def call(self, inputs):
        return rgb_to_gray(inputs)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)


@keras.saving.register_keras_serializable(package="histo_exp")
class StandardizeColour(_Float32Layer):
    """Each patch's channels moved to a fixed mean and spread (128 and 48 grey levels), in training and
    inference alike: a per-patch Reinhard-style colour normalisation, so a patient's overall stain
    colour and intensity stop being a feature. A flat patch keeps its mean only."""

    def __init__(self, mean: float = 128.0, std: float = 48.0, **kwargs):
        super().__init__(**kwargs)
        self.mean, self.std = float(mean), float(std)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        mean = ops.mean(x, axis=(1, 2), keepdims=True)
        spread = ops.sqrt(ops.mean(ops.square(x - mean), axis=(1, 2), keepdims=True))
        return ops.clip((x - mean) / ops.maximum(spread, 1.0) * self.std + self.mean, 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mean": self.mean, "std": self.std}


# Fixed per kind, so turning one augmentation on or off leaves the others' random streams unchanged.
_SEED_OFFSETS = {"dihedral": 1, "hed": 2, "brightness": 3, "contrast": 4, "saturation": 5, "hue": 6}


def _seed(seed: int | None, kind: str) -> int | None:
    return None if seed is None else (seed * 16 + _SEED_OFFSETS[kind]) % 2**31


def input_layers(
    *,
    flip: bool = True,
    rotate90: bool = True,
    hed: float = 0.0,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
    gray: bool = False,
    normalize: str = "none",
    seed: int | None = None,
) -> list[keras.layers.Layer]:
    """The layers to put between ``keras.Input`` and the model: geometry, stain, colour, then gray.

    A strength of 0 (or False) leaves its layer out, so it is exactly the identity. Strengths:

    - ``flip``: flip half the images left-right; ``rotate90``: turn each by 0/90/180/270 degrees.
    - ``hed``: HED stain jitter, each stain's concentration times U(1-hed, 1+hed) plus U(-hed, hed)
      (skimage's units; Tellez et al.'s "HED-light" is 0.05, "HED-strong" 0.2).
    - ``brightness``: add up to +-brightness of the 0..255 range (0.1 = up to +-25.5 grey levels).
    - ``contrast``: each channel's distance from its mean times U(1-contrast, 1+contrast), 0..1.
    - ``saturation``: HSV saturation times U(1-saturation, 1+saturation), 0..1.
    - ``hue``: turn the hue by up to +-hue of a full turn (0.05 = +-18 degrees), 0..0.5.
    - ``gray``: ``ToGray`` after them (always active): the network sees one channel.
    - ``normalize``: ``per_patch`` ends with ``StandardizeColour`` (always active); ``none`` does not.

    ``seed`` fixes every layer's random stream (each layer gets its own seed derived from it); None
    draws fresh seeds.
    """
    if not 0.0 <= hue <= 0.5:
        raise UsageError(f"hue is 0..0.5 (of a full turn), got {hue}")
    if normalize not in ("none", "per_patch"):
        raise UsageError(f"data.normalize must be none or per_patch; got {normalize!r}")
    colour = {  # in this order: stain first, then the camera-like jitters
        "hed": lambda s, seed: HEDJitter(scale=s, shift=s, seed=seed),
        "brightness": lambda s, seed: RandomBrightness(s, value_range=(0, 255), seed=seed),
        "contrast": lambda s, seed: RandomContrast((s, s), value_range=(0, 255), seed=seed),
        "saturation": lambda s, seed: RandomSaturation(s, seed=seed),
        "hue": lambda s, seed: RandomHue(2.0 * s, value_range=(0, 255), seed=seed),
    }
    strengths = {"hed": hed, "brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue}
    layers: list[keras.layers.Layer] = []
    if flip or rotate90:
        layers.append(RandomDihedral(flip=flip, rotate90=rotate90, seed=_seed(seed, "dihedral")))
    layers += [make(strengths[kind], _seed(seed, kind)) for kind, make in colour.items() if strengths[kind]]
    if gray:
        layers.append(ToGray())
    if normalize == "per_patch":
        layers.append(StandardizeColour())
    return layers
