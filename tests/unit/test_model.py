"""The CNN builds and trains a step for hyperparameters sampled from the search space."""

import inspect
import itertools

import keras
import keras_tuner as kt
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from histo_exp.model.cnn import auc_metric, block_widths, build_cnn, max_blocks
from histo_exp.model.hypermodel import SpaceHyperModel, lr_factor

from helpers import flat_layers
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
        conv = [layer for layer in flat_layers(model) if isinstance(layer, keras.layers.Conv2D)]
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
    keras.utils.set_random_seed(0)  # the untrained weights, so the same outputs every run
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
    # The reloaded model reports "auc" (what the tuner's objective val_auc reads), the IDC column's metric.
    scores = again.evaluate(x, y, return_dict=True, verbose=0)
    assert scores["auc"] == pytest.approx(float(auc_metric(2)(y, prob)), abs=1e-5)


def test_the_auc_metric_is_the_idc_columns_auc():
    """Checked on scores spread over [0, 1]: an untrained network's all sit near 0.5, inside a few of the
    metric's 200 thresholds, where its estimate strays from the exact AUC by more than any tolerance."""
    rng = np.random.default_rng(0)
    p = rng.uniform(size=2000)
    idc = (rng.uniform(size=2000) < p).astype("float32")  # an AUC near 0.84
    y, prob = np.stack([1 - idc, idc], axis=1), np.stack([1 - p, p], axis=1).astype("float32")
    exact = roc_auc_score(idc, p)
    assert float(auc_metric(2)(y, prob)) == pytest.approx(exact, abs=0.005)


def original_cnn(input_shape, *, blocks, filters, max_filters=512, kernel_size=3, activation="relu",
                 dropout=0.25, dense_units=(256, 128, 64), dtype="float32"):
    """The network as it was before ``batch_norm``, ``head`` and ``convs_per_block``, written out."""
    layers = [keras.Input(shape=tuple(input_shape)), keras.layers.Rescaling(1.0 / 255, dtype=dtype)]
    for width in block_widths(blocks, filters, max_filters):
        layers += [keras.layers.Conv2D(width, kernel_size, activation=activation, padding="same", dtype=dtype),
                   keras.layers.MaxPooling2D(dtype=dtype), keras.layers.Dropout(dropout, dtype=dtype)]
    layers.append(keras.layers.Flatten(dtype=dtype))
    layers += [keras.layers.Dense(units, activation="relu", dtype=dtype) for units in dense_units]
    layers.append(keras.layers.Dense(2, activation="softmax", dtype="float32"))
    return keras.Sequential(layers)


def configs(model: keras.Model) -> list[tuple[str, dict]]:
    """Each layer's class and config, less its (generated) name."""
    return [(type(layer).__name__, {k: v for k, v in layer.get_config().items() if k != "name"})
            for layer in model.layers]


def kinds(model: keras.Model) -> list[str]:
    return [type(layer).__name__ for layer in flat_layers(model)]


@pytest.mark.parametrize("kwargs", [
    {"blocks": 2, "filters": 8},
    {"blocks": 3, "filters": 16, "max_filters": 32, "kernel_size": 5, "activation": "elu", "dropout": 0.1,
     "dense_units": (16, 8, 4), "dtype": "mixed_bfloat16"},
])
def test_the_default_build_is_the_original_network(kwargs):
    model = build_cnn((32, 32, 3), **kwargs)
    blocks = kwargs["blocks"]
    assert kinds(model) == ["Rescaling", *["Conv2D", "MaxPooling2D", "Dropout"] * blocks, "Flatten",
                            "Dense", "Dense", "Dense", "Dense"]
    assert configs(model) == configs(original_cnn((32, 32, 3), **kwargs))
    assert model.count_params() == original_cnn((32, 32, 3), **kwargs).count_params()


def test_the_yaml_keeps_the_original_network_unless_told_otherwise(compose_cfg):
    """cnn.yaml fixes the three options at the builder's defaults: no new hyperparameters."""
    cfg = compose_cfg()
    defaults = inspect.signature(build_cnn).parameters
    for key in ("batch_norm", "head", "convs_per_block"):
        assert cfg.model[key] == defaults[key].default, key
    hypermodel = make_hypermodel(cfg.model, cfg.optimizer, (32, 32, 3))
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    assert not {"batch_norm", "head", "convs_per_block"} & set(hp.values)
    assert "BatchNormalization" not in kinds(model) and "Flatten" in kinds(model)
    assert kinds(model).count("Conv2D") == hp.values["blocks"]


def test_batch_norm_follows_each_convolution_which_has_no_bias():
    model = build_cnn((16, 16, 3), blocks=2, filters=4, convs_per_block=2, activation="selu",
                      dense_units=(4, 4, 4), batch_norm=True)
    layers = model.layers
    conv = [i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Conv2D)]
    assert len(conv) == 4
    for i in conv:
        assert layers[i].use_bias is False and len(layers[i].weights) == 1  # the kernel only
        assert layers[i].get_config()["activation"] == "linear"
        assert isinstance(layers[i + 1], keras.layers.BatchNormalization)
        assert isinstance(layers[i + 2], keras.layers.Activation)
        assert layers[i + 2].get_config()["activation"] == "selu"
    assert kinds(model).count("BatchNormalization") == 4
    # KerasTuner hands a choice of booleans over as 0/1: the same network.
    assert kinds(build_cnn((16, 16, 3), blocks=2, filters=4, convs_per_block=2, dense_units=(4, 4, 4),
                           batch_norm=1)) == kinds(model)
    with pytest.raises(ValueError, match="batch_norm must be true or false"):
        build_cnn((16, 16, 3), blocks=1, filters=4, batch_norm="false")


def test_the_gap_head_pools_instead_of_flattening_and_is_smaller():
    flat = build_cnn((32, 32, 3), blocks=2, filters=8, dense_units=(16, 8, 4))
    gap = build_cnn((32, 32, 3), blocks=2, filters=8, dense_units=(16, 8, 4), head="gap")
    assert "GlobalAveragePooling2D" in kinds(gap) and "Flatten" not in kinds(gap)
    assert kinds(gap) == [k if k != "Flatten" else "GlobalAveragePooling2D" for k in kinds(flat)]
    assert gap.layers[kinds(gap).index("GlobalAveragePooling2D") + 1].input.shape == (None, 16)
    assert gap.count_params() < flat.count_params()


def test_convs_per_block_stacks_convolutions_before_each_pooling():
    one = build_cnn((32, 32, 3), blocks=2, filters=8, dense_units=(4, 4, 4))
    two = build_cnn((32, 32, 3), blocks=2, filters=8, dense_units=(4, 4, 4), convs_per_block=2)
    assert kinds(two).count("Conv2D") == 2 * kinds(one).count("Conv2D") == 4
    assert kinds(two).count("MaxPooling2D") == kinds(one).count("MaxPooling2D") == 2
    assert kinds(two)[1:7] == ["Conv2D", "Conv2D", "MaxPooling2D", "Dropout", "Conv2D", "Conv2D"]
    assert [layer.filters for layer in two.layers if isinstance(layer, keras.layers.Conv2D)] == [8, 8, 16, 16]
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="convs_per_block must be an integer >= 1"):
            build_cnn((32, 32, 3), blocks=1, filters=8, convs_per_block=bad)


@pytest.mark.parametrize("head", ["dense", "GAP", ""])
def test_an_unknown_head_names_the_allowed_ones(head):
    with pytest.raises(ValueError, match=rf"model\.head must be one of flatten, gap; got '{head}'"):
        build_cnn((32, 32, 3), blocks=1, filters=8, head=head)


def test_the_options_are_searchable():
    """Booleans, strings and ints through the notation, KerasTuner and the builder."""
    space = {"blocks": 1, "filters": 4, "dense_units": [4, 4, 4],
             "batch_norm": {"choice": [False, True]}, "head": {"choice": ["flatten", "gap"]},
             "convs_per_block": {"min": 1, "max": 2}}
    hypermodel = make_hypermodel(space, {}, (8, 8, 3))
    declared = kt.HyperParameters()
    hypermodel.build(declared)
    assert {h.name: type(h).__name__ for h in declared.space} == {
        "batch_norm": "Choice", "head": "Choice", "convs_per_block": "Int"}
    assert declared.get("head") == "flatten" and declared.get("convs_per_block") == 1
    for batch_norm, head, convs in itertools.product([False, True], ["flatten", "gap"], [1, 2]):
        hp = kt.HyperParameters()
        hp.values.update(batch_norm=batch_norm, head=head, convs_per_block=convs)
        layers = kinds(hypermodel.build(hp))
        assert layers.count("Conv2D") == convs
        assert layers.count("BatchNormalization") == (convs if batch_norm else 0)
        assert ("GlobalAveragePooling2D" in layers) == (head == "gap") != ("Flatten" in layers)


@pytest.mark.parametrize("options", [
    {"batch_norm": True}, {"head": "gap"}, {"convs_per_block": 2},
    {"batch_norm": True, "head": "gap", "convs_per_block": 2},
])
def test_each_option_trains_a_step_in_mixed_bfloat16(options):
    model = build_cnn((16, 16, 3), blocks=2, filters=8, dense_units=(8, 8, 8), dtype="mixed_bfloat16",
                      **options)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    y = np.eye(2, dtype="float32")[rng.integers(0, 2, 8)]
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    prob = model.predict(x, verbose=0)
    assert prob.dtype == np.float32 and np.allclose(prob.sum(axis=1), 1.0, atol=1e-5)
    for layer in model.layers[1:-1]:
        assert layer.dtype_policy.name == "mixed_bfloat16", layer.name
    assert model.layers[-1].dtype_policy.name == "float32"
    if options.get("batch_norm"):
        [bn, *_] = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        assert bn.compute_dtype == "bfloat16" and bn.moving_variance.dtype == "float32"


@pytest.mark.parametrize("batch", [1024, 4096])
def test_large_batches_train_several_steps_per_execution_with_a_scaled_learning_rate(batch):
    """GPU settings on a CPU: a batch of 4096 and 4 steps per compiled call train without error, and
    the sampled learning rate grows with the batch by the rule asked for."""
    hypermodel = make_hypermodel({"blocks": 1, "filters": 4, "dense_units": [8, 8, 8]},
                                 {"learning_rate": 1e-3}, (16, 16, 3), steps_per_execution=4,
                                 lr_scaling="sqrt", batch_size=batch, lr_base_batch=64)
    model = hypermodel.build(kt.HyperParameters())
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3 * (batch / 64) ** 0.5)
    assert model.steps_per_execution == 4
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2 * batch, 16, 16, 3), dtype=np.uint8)
    y = np.eye(2, dtype="float32")[rng.integers(0, 2, 2 * batch)]
    history = model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_learning_rate_scaling_rules():
    assert [lr_factor(rule, 1024, 64) for rule in ("none", "linear", "sqrt")] == [1.0, 16.0, 4.0]
    with pytest.raises(ValueError, match="none, linear, sqrt"):
        lr_factor("cubic", 1024, 64)
