"""Failed trials: a NaN or infinite loss or metric, why a trial failed, and a search whose every trial failed.

A NaN or infinite value ends a trial through KerasTuner's ``FailedTrialError``, so KerasTuner
records it FAILED and counts it towards ``max_consecutive_failed_trials``; it is never scored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import keras_tuner as kt

from histo_exp.errors import NothingToKeep

FAILED_TRIAL = f"{kt.errors.FailedTrialError.__module__}.{kt.errors.FailedTrialError.__qualname__}: "
NON_FINITE = re.compile(r"\bbecame (NaN|infinite) at epoch\b")


class SearchFailed(NothingToKeep):
    """No trial of the search succeeded, so there is no model to keep: said in one line, not a traceback."""


def non_finite(history: Mapping[str, Sequence[float]]) -> str | None:
    """The first NaN or infinite value of a fit's per-epoch metrics, said in words; None if all are finite."""
    epochs = max((len(values) for values in history.values()), default=0)
    for epoch in range(epochs):
        for name, values in history.items():
            if epoch < len(values) and not math.isfinite(values[epoch]):
                what = "NaN" if math.isnan(values[epoch]) else "infinite"
                return f"{name} became {what} at epoch {epoch + 1}"
    return None


def fail_if_non_finite(history: Mapping[str, Sequence[float]], fold: int = 0, folds: int = 0) -> None:
    """Fail the trial (KerasTuner's ``FailedTrialError``) when a fit's loss or a metric was NaN or infinite."""
    reason = non_finite(history)
    if reason:
        raise kt.errors.FailedTrialError(reason + (f" (fold {fold + 1} of {folds})" if folds else ""))


def last_line(message: str | None) -> str:
    """The last line of a traceback: the exception and its message."""
    lines = (message or "").strip().splitlines()
    return lines[-1].strip() if lines else ""


def failure_reason(message: str | None) -> str:
    """One line on why a trial failed, from KerasTuner's traceback; a ``FailedTrialError``'s message alone."""
    return last_line(message).removeprefix(FAILED_TRIAL) or "no error recorded"


def trial_error(message: str | None) -> str | None:
    """What a failed trial's run records: the reason of a ``FailedTrialError``, else the whole traceback."""
    return failure_reason(message) if last_line(message).startswith(FAILED_TRIAL) else message


def is_scored(trial: kt.engine.trial.Trial) -> bool:
    """Whether a trial completed with a finite objective: the only trials a search may keep."""
    return trial.status == kt.engine.trial.TrialStatus.COMPLETED and trial.score is not None \
        and math.isfinite(trial.score)


def consecutive_failures(oracle: kt.Oracle) -> int:
    """How many trials in a row failed at the end of the search (KerasTuner stops at its limit)."""
    count = 0
    for trial_id in reversed(getattr(oracle, "end_order", [])):
        if oracle.trials[trial_id].status != kt.engine.trial.TrialStatus.FAILED:
            break
        count += 1
    return count


def stopped_by_failures(oracle: kt.Oracle) -> bool:
    """Whether KerasTuner stopped the search because too many trials in a row failed."""
    limit = getattr(oracle, "max_consecutive_failed_trials", None)
    return bool(limit) and consecutive_failures(oracle) >= limit


def search_failed(oracle: kt.Oracle) -> SearchFailed:
    """The error of a search without a scored trial: how many failed, the last reason, and what to try."""
    ended = [oracle.trials[t] for t in getattr(oracle, "end_order", [])] or list(oracle.trials.values())
    reasons = [failure_reason(t.message) for t in ended if not is_scored(t)]
    count = f"{len(ended)} trial{'s' if len(ended) != 1 else ''}"
    if stopped_by_failures(oracle):
        count += f", stopped at tuner.max_consecutive_failed_trials={oracle.max_consecutive_failed_trials}"
    last = f"; the last one: {reasons[-1]}" if reasons else ""
    if reasons and all(NON_FINITE.search(r) for r in reasons):
        hint = ("a NaN or infinite loss mostly means too high a learning rate: lower optimizer.learning_rate "
                "(or the top of its search range); if that does not help, check the data")
    else:
        hint = "each trial's error is in the log above and on its MLflow trial run (tag histo_exp.error)"
    return SearchFailed(f"every trial failed ({count}{last}), so there is no model to keep: {hint}")
