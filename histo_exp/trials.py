"""``python -m histo_exp.trials source=<search run id | tuner folder> [csv=trials.csv]``: a row per trial.

From a tuner folder it reads KerasTuner's own trial files; from a run id it reads the search
run's nested trial runs in MLflow. Either way the columns are: trial, status, score, the
best-epoch metrics, then one column per hyperparameter.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from histo_exp.config import CONFIG_DIR, require
from histo_exp.errors import one_line_errors

FIXED = ("trial", "status", "val_auc")
USAGE = "python -m histo_exp.trials source=<search run id | tuner folder> [csv=trials.csv]"


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
        raise FileNotFoundError(f"no KerasTuner trials (trial_*/trial.json) under {folder}")
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


def export(cfg: DictConfig) -> str:
    """The table of ``cfg.source``, written to ``cfg.csv`` or printed."""
    source = Path(str(cfg.source))
    rows = from_tuner_dir(source) if source.is_dir() else from_run(str(cfg.source), str(cfg.tracking_uri))
    text = trials_csv(rows)
    if cfg.csv:
        Path(cfg.csv).write_text(text)
        print(f"{len(rows)} trials -> {cfg.csv}")
    else:
        sys.stdout.write(text)
    return text


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR / "commands"), config_name="trials")
def main(cfg: DictConfig) -> None:
    with one_line_errors():
        require(cfg, ("source",), USAGE)
        export(cfg)


if __name__ == "__main__":
    main()
