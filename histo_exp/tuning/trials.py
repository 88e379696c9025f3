"""A search's trials as a table (a row per trial), from KerasTuner's files or from MLflow's trial runs.

The columns: trial, status, score, the best-epoch metrics, then one column per hyperparameter.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from histo_exp.errors import PathNotFound

FIXED = ("trial", "status", "val_auc")


def format_hparams(values: Mapping[str, Any]) -> str:
    """``a=1 b=0.001`` with floats kept short."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def trials_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """CSV text of trial rows; the fixed columns first, then the rest sorted by name."""
    rows = list(rows)
    extra = sorted({k for r in rows for k in r} - set(FIXED))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*FIXED, *extra], lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: str(r["trial"])):
        writer.writerow(row)
    return out.getvalue()


def from_tuner_dir(folder: Path) -> list[dict[str, Any]]:
    """Rows from KerasTuner's trial files (``<folder>/trial_*/trial.json``)."""
    from keras_tuner.engine.trial import Trial

    files = sorted(Path(folder).glob("trial_*/trial.json")) or sorted(Path(folder).glob("*/trial_*/trial.json"))
    if not files:
        raise PathNotFound(f"no KerasTuner trials (trial_*/trial.json) under {folder}")
    rows = []
    for path in files:
        trial = Trial.load(str(path))
        tracked = trial.metrics.metrics  # KerasTuner keeps the best epoch's value of each metric
        best = {name: trial.metrics.get_last_value(name) for name in tracked
                if tracked[name].get_history()}
        rows.append({"trial": trial.trial_id, "status": trial.status, **best, **trial.hyperparameters.values})
    return rows


def from_run(run_id: str, tracking_uri: str) -> list[dict[str, Any]]:
    """Rows from the nested trial runs of a search run in MLflow."""
    from histo_exp.tracking import trial_runs

    return [{"trial": r["trial"], "status": r["status"], **r["metrics"], **r["params"]}
            for r in trial_runs(run_id, tracking_uri)]
