"""Averaging models: test-time augmentation over the 8 dihedral views, and ensembles of members; both
give the averages computed by hand and survive save_model/load_model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from histo_exp.model.augment import input_layers
from histo_exp.model.ensemble import average_models, with_tta
from histo_exp.model.saving import load_model, save_model

SHAPE = (8, 8, 3)


def images(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE)).astype("float32")


def tiny(seed: int, name: str = "cnn", dtype: str = "float32") -> keras.Model:
    """A small model that cares which way up a patch is (Flatten keeps positions)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input(SHAPE), keras.layers.Rescaling(1 / 255, dtype=dtype),
                             keras.layers.Conv2D(4, 3, activation="relu", dtype=dtype),
                             keras.layers.Flatten(dtype=dtype),
                             keras.layers.Dense(2, activation="softmax", dtype="float32")], name=name)


def views(x: np.ndarray) -> list[np.ndarray]:
    turns = [np.rot90(x, k, axes=(1, 2)) for k in range(4)]
    return turns + [np.flip(t, axis=2) for t in turns]


def test_tta_is_the_mean_over_the_eight_views():
    model, x = tiny(0), images()
    by_hand = np.mean([np.asarray(model(np.ascontiguousarray(v), training=False)) for v in views(x)], axis=0)
    tta = with_tta(model)
    got = tta.predict(x, verbose=0)
    assert got.shape == (len(x), 2) and got.dtype == np.float32
    np.testing.assert_allclose(got, by_hand, atol=1e-6)
    assert not np.allclose(got, model.predict(x, verbose=0), atol=1e-4)  # the views do differ
    assert len(tta.weights) == len(model.weights)  # one model, called 8 times


def test_tta_changes_nothing_for_an_orientation_free_model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(4, 1, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="softmax")])
    x = images()
    np.testing.assert_allclose(with_tta(model).predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_tta_output_is_float32_for_a_mixed_precision_model():
    tta = with_tta(tiny(0, dtype="mixed_bfloat16"))
    assert keras.backend.standardize_dtype(tta.outputs[0].dtype) == "float32"
    assert tta.predict(images(), verbose=0).dtype == np.float32


def test_ensemble_is_the_mean_of_its_members():
    members, x = [tiny(s) for s in range(3)], images()
    by_hand = np.mean([np.asarray(m(x, training=False)) for m in members], axis=0)
    ensemble = average_models(members)
    got = ensemble.predict(x, verbose=0)
    assert ensemble.name == "ensemble" and got.shape == (len(x), 2) and got.dtype == np.float32
    np.testing.assert_allclose(got, by_hand, atol=1e-6)
    assert [m.name for m in members] == ["cnn"] * 3  # members are wrapped, not renamed
    single = average_models(members[:1]).predict(x, verbose=0)
    np.testing.assert_allclose(single, members[0].predict(x, verbose=0), atol=1e-6)


def test_ensemble_refuses_members_of_other_input_shapes():
    other = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="input shapes"):
        average_models([tiny(0), other])


def test_tta_and_ensembles_of_loaded_models_save_and_load(tmp_path):
    """Members loaded from saved files share their names (models named "cnn", TTA models "cnn_tta" with
    the same dihedral_k layers); with augmentation layers inside, the ensemble still saves, loads and
    predicts the mean of its members."""
    x = images()
    augmented = keras.Sequential([keras.Input(SHAPE), *input_layers(hed=0.05, brightness=0.1, contrast=0.1,
                                                                    saturation=0.1, hue=0.05, seed=0),
                                  *tiny(2).layers], name="cnn")
    paths = [save_model(m, tmp_path / f"m{i}.keras", {"image_size": 8})
             for i, m in enumerate([tiny(0), augmented])]
    plain, aug, plain_again = (load_model(p)[0] for p in (*paths, paths[0]))
    members = [with_tta(aug), with_tta(plain), plain_again]
    ensemble = average_models(members)
    want = np.mean([np.asarray(m(x, training=False)) for m in members], axis=0)
    for model in (members[0], ensemble):
        path = save_model(model, tmp_path / f"{model.name}.keras", {"image_size": 8, "tta": True})
        back, meta = load_model(path)
        assert meta == {"image_size": 8, "tta": True}
        np.testing.assert_allclose(back.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    np.testing.assert_allclose(back.predict(x, verbose=0), want, atol=1e-6)
