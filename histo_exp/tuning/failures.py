"""Failed trials: a NaN or infinite loss or metric, and why a trial failed.

A NaN or infinite value ends a trial through KerasTuner's ``FailedTrialError``, so KerasTuner
records it FAILED and counts it towards ``max_consecutive_failed_trials``; it is never scored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import keras_tuner as kt

FAILED_TRIAL = f"{kt.errors.FailedTrialError.__module__}.{kt.errors.FailedTrialError.__qualname__}: "


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
