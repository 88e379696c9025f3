"""The search-space notation: fixed values, choices, int and float (log) ranges."""

import keras_tuner as kt
import pytest

from histo_exp.space import SearchSpaceError, declare, sample


def test_plain_values_are_fixed_and_not_searched():
    hp = kt.HyperParameters()
    assert declare(hp, "dropout", 0.25) == 0.25
    assert declare(hp, "activation", "relu") == "relu"
    assert hp.space == []


def test_choice_int_and_log_float_ranges():
    hp = kt.HyperParameters()
    assert declare(hp, "kernel_size", {"choice": [5, 3]}) == 5
    assert declare(hp, "blocks", {"min": 1, "max": 4}) == 1
    lr = declare(hp, "learning_rate", {"min": 1e-4, "max": 1e-2, "log": True})
    assert 1e-4 <= lr <= 1e-2
    kinds = {h.name: type(h).__name__ for h in hp.space}
    assert kinds == {"kernel_size": "Choice", "blocks": "Int", "learning_rate": "Float"}
    assert hp.get_config()["space"][2]["config"]["sampling"] == "log"


def test_sample_walks_lists_and_passes_targets_through():
    hp = kt.HyperParameters()
    group = {"_target_": "keras.optimizers.Adam", "name": "adam",
             "units": [{"choice": [64, 128]}, 32], "rate": {"min": 0.1, "max": 0.5}}
    out = sample(hp, group)
    assert out["_target_"] == "keras.optimizers.Adam" and out["name"] == "adam"
    assert out["units"] == [64, 32]
    assert [h.name for h in hp.space] == ["units_1", "rate"]


def test_values_already_chosen_by_the_tuner_are_used():
    hp = kt.HyperParameters()
    hp.values["kernel_size"] = 3
    assert declare(hp, "kernel_size", {"choice": [5, 3]}) == 3


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"choice": []}, "non-empty list"),
        ({"min": 5, "max": 1}, "larger than max"),
        ({"min": 0.0, "max": 1.0, "log": True}, "min > 0"),
        ({"min": "a", "max": 1}, "with numbers"),
        ({"low": 1, "high": 2}, "expected a fixed value"),
        ({"choice": [1, 2], "max": 3}, "choice is written"),
    ],
)
def test_bad_specs_say_what_is_expected(spec, message):
    with pytest.raises(SearchSpaceError, match=message):
        declare(kt.HyperParameters(), "model.x", spec)
