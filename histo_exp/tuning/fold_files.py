"""A cross-validated trial's own files beside KerasTuner's: each patient fold's best weights and scores.

KerasTuner checkpoints one model per trial (the last fold's); the kept model and a refit need every
fold's weights and best epoch, so each fold leaves ``checkpoint.fold<k>.weights.h5`` and the trial
leaves ``folds.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FOLD_RESULTS = "folds.json"  # in a trial's folder


def fold_checkpoint(trial_dir: str | Path, fold: int) -> Path:
    """The best epoch's weights of one patient fold of a trial."""
    return Path(trial_dir) / f"checkpoint.fold{fold}.weights.h5"


def write_fold_results(trial_dir: Path, histories: Sequence[Mapping[str, list[float]]], objective: str) -> None:
    """Each fold's best objective value and its epoch (1-based): what a refit trains for."""
    results = []
    for fold, history in enumerate(histories):
        values = history.get(objective) or []
        if values:
            best = int(np.nanargmax(values))
            results.append({"fold": fold, "score": values[best], "best_epoch": best + 1})
    (trial_dir / FOLD_RESULTS).write_text(json.dumps(results, indent=1))


def read_fold_results(trial_dir: str | Path) -> list[dict[str, Any]]:
    """What ``write_fold_results`` wrote for a trial ([] for a trial without it)."""
    path = Path(trial_dir) / FOLD_RESULTS
    return json.loads(path.read_text()) if path.exists() else []
