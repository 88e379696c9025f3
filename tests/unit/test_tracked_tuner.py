"""``TrackedTuner`` with fakes (``tests/fakes.py``): a failed or NaN trial is recorded FAILED with its reason
and the search goes on; a search whose every trial failed says so in one line. The trials do not train:
the hypermodel replays scripted epochs through KerasTuner's real callbacks and trial hooks."""

from __future__ import annotations

import logging
import math
import re

import keras_tuner as kt
import pytest

from histo_exp.tuning.failures import SearchFailed, stopped_by_failures
from histo_exp.tuning.final_model import best_trials
from histo_exp.tuning.trials import from_tuner_dir, trials_csv
from histo_exp.tuning.tuners import TrackedTuner

from fakes import ListOracle, RecordingTracker, ScriptedHyperModel

GOOD = [{"loss": 0.6, "auc": 0.7, "val_loss": 0.6, "val_auc": 0.75}, {"loss": 0.5, "auc": 0.8, "val_loss": 0.55,
                                                                    "val_auc": 0.8}]


class ListTuner(TrackedTuner, kt.Tuner):
    """KerasTuner's base tuner with tracking, fed by a ``ListOracle``."""


def tuner(tmp_path, script, values, failures: int = 3) -> tuple[ListTuner, RecordingTracker]:
    tracker = RecordingTracker()
    oracle = ListOracle(values, max_consecutive_failed_trials=failures)
    built = ListTuner(oracle=oracle, hypermodel=ScriptedHyperModel(script), tracker=tracker,
                      directory=str(tmp_path), project_name="search")
    return built, tracker


def search(built: ListTuner) -> None:
    try:
        built.search(x=None, validation_data=None, verbose=0)
    except RuntimeError:
        if not stopped_by_failures(built.oracle):
            raise


def test_a_failed_trial_is_recorded_with_its_error_and_the_search_goes_on(tmp_path):
    calls = []

    def first_fails(hp):
        calls.append(hp["learning_rate"])
        if len(calls) == 1:
            raise RuntimeError("simulated: out of memory while training")
        return GOOD

    built, tracker = tuner(tmp_path, first_fails, [{"learning_rate": 0.01}] * 3)
    search(built)
    assert [t.status for t in tracker.trials] == ["FAILED", "FINISHED", "FINISHED"]
    failed = tracker.trials[0]
    assert "simulated: out of memory" in failed.error and "val_auc" not in failed.metrics
    assert all(t.metrics["val_auc"] == pytest.approx(0.8) and len(t.epochs) == 2 for t in tracker.trials[1:])
    assert best_trials(built, 1)[0].score == pytest.approx(0.8)
    rows = from_tuner_dir(tmp_path / "search")
    assert sorted(r["status"] for r in rows) == ["COMPLETED", "COMPLETED", "FAILED"]
    text = trials_csv(rows).splitlines()
    assert text[0].startswith("trial,status,val_auc,") and len(text) == 4


def test_a_nan_trial_fails_with_its_epoch_and_the_search_keeps_the_others(tmp_path, caplog):
    """The NaN trial stops at its NaN epoch; max_consecutive_failed_trials=1 stops the search there,
    and the finished trial is kept all the same."""

    def nan_at_high_rate(hp):
        if hp["learning_rate"] < 1:
            return GOOD
        return [{"loss": 1e30, "auc": 0.5, "val_loss": math.nan, "val_auc": 0.5}, *GOOD]

    built, tracker = tuner(tmp_path, nan_at_high_rate, [{"learning_rate": 0.01}, {"learning_rate": 1e6},
                                                        {"learning_rate": 0.01}], failures=1)
    with caplog.at_level(logging.INFO):
        search(built)
    finished, nan = tracker.trials  # the third trial never ran
    assert nan.status == "FAILED" and nan.error == "val_loss became NaN at epoch 1"
    assert len(nan.epochs) == 1 and len(finished.epochs) == 2  # training stopped at the NaN epoch
    assert finished.status == "FINISHED" and finished.error is None and 0 <= finished.metrics["val_auc"] <= 1
    assert stopped_by_failures(built.oracle)
    assert [t.trial_id for t in best_trials(built, 2)] == [finished.trial_id]
    failed_line = next(r.getMessage() for r in caplog.records if " failed: " in r.getMessage())
    assert re.match(rf"trial {nan.trial_id} failed: val_loss became NaN at epoch 1 "
                    rf"\(best so far [0-9.]+, trial {finished.trial_id}\)  \[learning_rate=1e\+06\]$", failed_line)
    statuses = {r["learning_rate"]: r["status"] for r in from_tuner_dir(tmp_path / "search")}
    assert statuses == {0.01: "COMPLETED", 1e6: "FAILED"}


def test_a_search_whose_every_trial_failed_says_so_in_one_line(tmp_path):
    def always_fails(hp):
        raise RuntimeError("simulated failure")

    built, tracker = tuner(tmp_path, always_fails, [{"learning_rate": 0.01}] * 2, failures=5)
    search(built)
    assert [t.status for t in tracker.trials] == ["FAILED", "FAILED"]
    with pytest.raises(SearchFailed, match=r"^every trial failed \(2 trials; the last one: RuntimeError: simulated "
                       r"failure\), so there is no model to keep: each trial's error is in the log above"):
        best_trials(built, 1)
