"""Why a trial failed, in one line; class weights that balance the training split."""

import traceback

import keras_tuner as kt
import numpy as np
import pytest

from histo_exp import build
from histo_exp.tuning.failures import fail_if_non_finite, failure_reason, non_finite, trial_error


def test_a_nan_or_infinite_value_is_named_with_its_epoch_and_fold():
    assert non_finite({"loss": [0.7, 0.6], "val_auc": [0.8, 0.9]}) is None
    nan, inf = float("nan"), float("inf")
    assert non_finite({"loss": [0.7, inf, nan], "val_loss": [0.6, nan, 1.0]}) == "loss became infinite at epoch 2"
    assert non_finite({"loss": [0.7, 0.6], "val_auc": [0.8, nan]}) == "val_auc became NaN at epoch 2"
    fail_if_non_finite({"loss": [0.7]})
    with pytest.raises(kt.errors.FailedTrialError, match=r"^loss became NaN at epoch 1 \(fold 2 of 3\)$"):
        fail_if_non_finite({"loss": [nan]}, fold=1, folds=3)


def test_a_failed_trial_says_why_in_one_line():
    """KerasTuner keeps a failed trial's traceback; a deliberate failure (FailedTrialError) is its reason alone."""
    def traceback_of(error: Exception) -> str:
        try:
            raise error
        except Exception:
            return traceback.format_exc()

    deliberate = traceback_of(kt.errors.FailedTrialError("loss became NaN at epoch 2"))
    crash = traceback_of(RuntimeError("out of memory"))
    assert failure_reason(deliberate) == trial_error(deliberate) == "loss became NaN at epoch 2"
    assert failure_reason(crash) == "RuntimeError: out of memory" and trial_error(crash) == crash
    assert failure_reason(None) == "no error recorded" and trial_error(None) is None


def test_auto_class_weights_balance_the_training_split(compose_cfg, tiny_root):
    from histo_exp.data.dataset import load

    data = load(compose_cfg("data=idc", f"data.root={tiny_root}", "data.image_size=32").data, progress=False)
    weights = build.class_weight(data, "auto")
    counts = np.bincount(data.labels[data.split.train], minlength=2)
    assert weights[0] * counts[0] == pytest.approx(weights[1] * counts[1])
    assert (weights[0] * counts[0] + weights[1] * counts[1]) == pytest.approx(counts.sum())
    assert build.class_weight(data, "none") is None
