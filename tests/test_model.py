"""The CNN builds and trains a step for hyperparameters sampled from the search space."""

import keras
import keras_tuner as kt
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from histo_exp.model.cnn import block_widths, build_cnn, max_blocks
from histo_exp.model.hypermodel import SpaceHyperModel

from helpers import hypermodel as make_hypermodel


def sampled(hypermodel: SpaceHyperModel, seed: int) -> kt.HyperParameters:
    """Random values for every hyperparameter the hypermodel declares."""
    space = kt.HyperParameters()
    hypermodel.build(space)
    hp = kt.HyperParameters()
    for h in space.space:
        hp.values[h.name] = h.random_sample(seed)
    return hp


@pytest.mark.parametrize("size", [50, 32])
@pytest.mark.parametrize("color, channels", [("rgb", 3), ("gray", 1)])
def test_sampled_models_build_and_train_a_step(compose_cfg, size, color, channels):
    cfg = compose_cfg(f"data.image_size={size}", f"data.color={color}")
    hypermodel = make_hypermodel(cfg.model, cfg.optimizer, (size, size, channels))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, size, size, channels), dtype=np.uint8)
    y = np.eye(2, dtype="float32")[rng.integers(0, 2, 8)]
    for seed in range(2):
        hp = sampled(hypermodel, seed)
        model = hypermodel.build(hp)
        history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        assert {"loss", "auc"} <= set(history.history)
        prob = model.predict(x, verbose=0)
        assert prob.shape == (8, 2) and np.allclose(prob.sum(axis=1), 1.0, atol=1e-5)
        conv = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        assert len(conv) == hp.values["blocks"]
        assert conv[0].filters == hp.values["filters"]


def test_block_count_is_bounded_by_image_size(compose_cfg):
    cfg = compose_cfg("model.blocks={min: 1, max: 9}")
    hypermodel = make_hypermodel(cfg.model, cfg.optimizer, (8, 8, 3))
    assert hypermodel.model_space["blocks"]["max"] == max_blocks(8) == 3
    with pytest.raises(ValueError, match="does not fit 8px images"):
        build_cnn((8, 8, 3), blocks=4, filters=16)


def test_widths_double_per_block_up_to_the_cap():
    assert block_widths(5, 64, 512) == [64, 128, 256, 512, 512]


def test_the_model_scales_uint8_inside_and_saves_with_its_metric(tmp_path):
    model = build_cnn((16, 16, 3), blocks=2, filters=8, dense_units=(8, 8, 8))
    assert isinstance(model.layers[0], keras.layers.Rescaling) and model.layers[0].scale == pytest.approx(1 / 255)
    hypermodel_metric = make_hypermodel({"blocks": 1, "filters": 8, "dense_units": [8, 8, 8]}, {}, (16, 16, 3))
    model = hypermodel_metric.build(kt.HyperParameters())
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")  # compiled: needs IdcAUC registered
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    y = np.eye(2, dtype="float32")[rng.integers(0, 2, 64)]
    prob = again.predict(x, verbose=0)
    assert np.allclose(model.predict(x, verbose=0), prob, atol=1e-6)
    # The reloaded metric is "auc" of the IDC column (what the tuner's objective val_auc reads).
    scores = again.evaluate(x, y, return_dict=True, verbose=0)
    assert scores["auc"] == pytest.approx(roc_auc_score(y[:, 1], prob[:, 1]), abs=0.02)
