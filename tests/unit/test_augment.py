"""Input augmentation layers: float32 under any policy, off at inference and at strength 0, changing
images per image when training, reproducible from a seed on TensorFlow and JAX, and saved with the model."""

from __future__ import annotations

import json

import cv2
import keras
import numpy as np
import pytest

from histo_exp.errors import UsageError
from histo_exp.model.augment import (
    Dihedral,
    HEDJitter,
    RandomDihedral,
    RandomSaturation,
    StandardizeColour,
    ToGray,
    input_layers,
)
from histo_exp.model.colour import hed_to_rgb, rgb_to_hed, saturate
from histo_exp.model.saving import load_model, save_model

STRENGTHS = {"hed": 0.05, "brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.05}


ALL = {"flip": True, "rotate90": True, **STRENGTHS}


NONE = {"flip": False, "rotate90": False}


def images(n: int = 8, side: int = 12, seed: int = 0) -> np.ndarray:
    """uint8-valued float patches with some pure black and white pixels."""
    x = np.random.default_rng(seed).integers(0, 256, (n, side, side, 3)).astype("float32")
    x[:, 0, 0] = 0.0
    x[:, 0, 1] = 255.0
    return x


def views(x: np.ndarray) -> list[np.ndarray]:
    """The 8 dihedral views, as ``Dihedral(k)`` documents them."""
    turns = [np.rot90(x, k, axes=(-3, -2)) for k in range(4)]
    return turns + [np.flip(t, axis=-2) for t in turns]


def one_layer(kind: str, seed: int | None = 1) -> keras.layers.Layer:
    """The builder's layer for one augmentation at its ``STRENGTHS`` value (or the flips and turns)."""
    if kind == "dihedral":
        (layer,) = input_layers(seed=seed)
    else:
        (layer,) = input_layers(**NONE, **{kind: STRENGTHS[kind]}, seed=seed)
    return layer


KINDS = ["dihedral", *STRENGTHS]


@pytest.fixture
def mixed_bfloat16():
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


def test_every_layer_keeps_shape_and_float32_under_mixed_bfloat16(mixed_bfloat16):
    x = images()
    layers = [*input_layers(**ALL, seed=0), Dihedral(5), ToGray()]
    assert [type(layer).__name__ for layer in layers] == [
        "RandomDihedral", "HEDJitter", "RandomBrightness", "RandomContrast", "RandomSaturation",
        "RandomHue", "Dihedral", "ToGray"]
    for layer in layers:
        assert layer.compute_dtype == "float32", type(layer).__name__
        for training in (True, False):
            y = layer(x, training=training)
            channels = 1 if isinstance(layer, ToGray) else 3
            assert y.shape == (*x.shape[:3], channels)
            assert keras.backend.standardize_dtype(y.dtype) == "float32"
    # and in front of a bfloat16 network, in training
    model = keras.Sequential([keras.Input(x.shape[1:]), *input_layers(**ALL, gray=True, seed=0),
                              keras.layers.Conv2D(2, 3), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="softmax", dtype="float32")])
    assert model.layers[-3].compute_dtype == "bfloat16"
    assert model(x, training=True).shape == (len(x), 2)


@pytest.mark.parametrize("kind", KINDS)
def test_strength_zero_leaves_the_layer_out(kind):
    assert input_layers(**NONE) == []
    off = {**ALL, **(NONE if kind == "dihedral" else {kind: 0.0})}
    rest = input_layers(**off)
    assert len(rest) == len(KINDS) - 1
    assert type(one_layer(kind)) not in {type(layer) for layer in rest}


def test_our_colour_maths_is_the_identity_at_strength_zero():
    x = images()
    np.testing.assert_allclose(np.asarray(HEDJitter(scale=0.0, shift=0.0)(x, training=True)), x, atol=1e-2)
    np.testing.assert_allclose(np.asarray(RandomSaturation(0.0)(x, training=True)), x, atol=1e-2)
    assert np.array_equal(np.asarray(RandomDihedral(flip=False, rotate90=False)(x, training=True)), x)


@pytest.mark.parametrize("kind", KINDS)
def test_random_layers_are_off_at_inference(kind):
    x = images()
    layer = one_layer(kind)
    assert np.array_equal(np.asarray(layer(x, training=False)), x)
    assert np.array_equal(np.asarray(layer(x)), x)  # Keras's own colour layers would augment here
    model = keras.Sequential([keras.Input(x.shape[1:]), layer])
    assert np.array_equal(model.predict(x, verbose=0), x)
    assert np.array_equal(np.asarray(model(x)), x)


@pytest.mark.parametrize("kind", KINDS)
def test_random_layers_change_each_image_its_own_way_when_training(kind):
    x = np.repeat(images(1), 32, axis=0)  # one patch, 32 times
    y = np.asarray(one_layer(kind, seed=None)(x, training=True))
    assert y.dtype == np.float32 and 0.0 <= y.min() and y.max() <= 255.0
    changed = [not np.allclose(yi, x[0], atol=0.5) for yi in y]
    assert sum(changed) >= 8, f"{kind} changed {sum(changed)} of 32 images"
    distinct = {yi.round(1).tobytes() for yi in y}
    assert len(distinct) >= (4 if kind == "dihedral" else 16), f"{kind}: the same change for every image"


def test_hed_round_trip_recovers_the_image():
    x = images(16, 20)
    back = np.asarray(hed_to_rgb(rgb_to_hed(x)))
    assert np.abs(back - x).max() < 0.05  # well under a grey level, with 0 and 255 in the patch


def test_hed_uses_the_ruifrok_johnston_stain_vectors():
    # haematoxylin alone has skimage's optical density (0.65, 0.70, 0.29), scaled by -ln(1e-6)
    stain = np.zeros((1, 1, 1, 3), "float32")
    stain[..., 0] = 0.05
    rgb = np.asarray(hed_to_rgb(stain))
    od = 0.05 * -np.log(1e-6) * np.array([0.65, 0.70, 0.29])
    np.testing.assert_allclose(rgb.ravel(), 255 * np.exp(-od), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(rgb_to_hed(rgb)).ravel(), [0.05, 0.0, 0.0], atol=1e-5)
    # white is no stain; HED jitter's shift is what colours it
    white = np.full((1, 1, 1, 3), 255.0, "float32")
    np.testing.assert_allclose(np.asarray(rgb_to_hed(white)), 0.0, atol=1e-7)


def test_hed_matches_skimage_where_installed():
    color = pytest.importorskip("skimage.color")
    x = images(2, 8)
    ours = np.asarray(rgb_to_hed(x))
    theirs = color.rgb2hed(x.astype(np.uint8))
    positive = theirs > 0  # skimage clips stains at 0, which would break the round trip
    np.testing.assert_allclose(ours[positive], theirs[positive], atol=1e-5)


def test_saturation_is_tensorflows_adjust_saturation():
    tf = pytest.importorskip("tensorflow")
    x = images(2, 8)
    x[0, 1, :3] = [[255, 0, 0], [7, 7, 7], [0, 0, 0]]  # saturated, grey, black
    for gain in (0.0, 0.5, 1.1, 3.0):
        want = tf.image.adjust_saturation(x / 255.0, gain).numpy() * 255.0
        got = np.asarray(saturate(x, np.full((2, 1, 1, 1), gain, "float32")))
        np.testing.assert_allclose(got, want, atol=1e-3)


def test_dihedral_k_is_the_documented_turn_and_flip():
    x = images(2, 6)
    for k, want in enumerate(views(x)):
        assert np.array_equal(np.asarray(Dihedral(k)(x)), want), k
        assert np.array_equal(np.asarray(Dihedral(k)(x, training=True)), want), k


@pytest.mark.parametrize("flip, rotate90, elements", [(True, True, range(8)), (True, False, [0, 4]),
                                                      (False, True, range(4))])
def test_random_dihedral_only_moves_pixels(flip, rotate90, elements):
    x = np.repeat(images(1, 6), 64, axis=0)
    y = np.asarray(RandomDihedral(flip=flip, rotate90=rotate90, seed=3)(x, training=True))
    allowed = [v[0] for v in views(x[:1])]
    found = set()
    for yi in y:
        assert np.array_equal(np.sort(yi, axis=None), np.sort(x[0], axis=None))
        (k,) = [k for k, v in enumerate(allowed) if np.array_equal(yi, v)]
        found.add(k)
    assert found == set(elements)


def test_random_dihedral_needs_square_images_to_turn():
    with pytest.raises(UsageError, match="square"):
        RandomDihedral(seed=0)(np.zeros((1, 4, 6, 3), "float32"), training=True)
    y = RandomDihedral(rotate90=False, seed=0)(np.zeros((1, 4, 6, 3), "float32"), training=True)
    assert y.shape == (1, 4, 6, 3)


def test_to_gray_is_cv2s_luminance_in_training_and_inference():
    x = images(4)
    want = np.stack([cv2.cvtColor(xi.astype(np.uint8), cv2.COLOR_RGB2GRAY) for xi in x])[..., None]
    for training in (True, False):
        y = np.asarray(ToGray()(x, training=training))
        assert y.shape == (*x.shape[:3], 1)
        np.testing.assert_allclose(y, want, atol=1.0)  # cv2 rounds to whole grey levels
    model = keras.Sequential([keras.Input(x.shape[1:]), *input_layers(**ALL, gray=True, seed=0)])
    np.testing.assert_allclose(model.predict(x, verbose=0), want, atol=1.0)


def test_per_patch_normalisation_gives_every_patch_the_same_colour_statistics_at_inference_too(tmp_path):
    x = images(4)
    x[1] = x[0] * 0.5 + 60.0  # the same tissue, paler
    x[2, ..., 0] *= 0.3
    x[3] = 200.0  # a flat patch
    model = keras.Sequential([keras.Input(x.shape[1:]), *input_layers(**NONE, normalize="per_patch")])
    y = model.predict(x, verbose=0)
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y[:3].mean(axis=(1, 2)), 128.0, atol=3.0)  # clipping moves it a little
    np.testing.assert_allclose(y[:3].std(axis=(1, 2)), 48.0, atol=3.0)
    np.testing.assert_allclose(y[3], 128.0)  # no spread to scale: its mean only
    np.testing.assert_allclose(y[1], y[0], atol=1e-3)  # the paler copy looks the same to the network
    np.testing.assert_allclose(np.asarray(StandardizeColour()(x)), y, atol=1e-4)
    path = save_model(model, tmp_path / "m.keras", {})
    np.testing.assert_allclose(load_model(path)[0].predict(x, verbose=0), y, atol=1e-5)
    with pytest.raises(UsageError, match="none or per_patch"):
        input_layers(normalize="yes")


def test_same_seed_same_batch_on_tensorflow():
    x = images()

    def run(seed):
        out = x
        for layer in input_layers(**ALL, seed=seed):
            out = layer(out, training=True)
        return np.asarray(out)

    assert np.array_equal(run(7), run(7))
    assert not np.allclose(run(7), run(8))


def test_fit_draws_fresh_augmentations_and_the_model_saves(tmp_path):
    x = images(16)
    y = np.eye(2, dtype="float32")[np.arange(16) % 2]
    model = keras.Sequential([keras.Input(x.shape[1:]), *input_layers(**ALL, gray=True, seed=0),
                              keras.layers.Rescaling(1 / 255), keras.layers.Conv2D(2, 3),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    random_layers = model.layers[:6]

    def states():
        return [np.asarray(v).copy() for layer in random_layers for v in layer.non_trainable_variables]

    before = states()
    assert len(before) == 6
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert all(not np.array_equal(b, a) for b, a in zip(before, states(), strict=True)), "a layer drew nothing in fit"
    path = save_model(model, tmp_path / "aug.keras", {"image_size": 12, "color": "gray"})
    loaded, meta = load_model(path)
    assert meta["color"] == "gray"
    def configs(m):  # through JSON, as the file holds them (tuples come back as lists)
        return [json.loads(json.dumps(layer.get_config())) for layer in m.layers[:7]]

    assert configs(loaded) == configs(model)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
