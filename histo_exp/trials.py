"""``python -m histo_exp.trials <search run id | tuner folder> --csv trials.csv``: one row per trial.

From a tuner folder it reads KerasTuner's own ``trial_*/trial.json``; from a run id it reads the
search run's nested trial runs in MLflow. Either way the columns are: trial, status, score, the
best-epoch metrics, then one column per hyperparameter.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from histo_exp.config import local_tracking_uri

FIXED = ("trial", "status", "val_auc")


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
    files = sorted(Path(folder).glob("trial_*/trial.json")) or sorted(Path(folder).glob("*/trial_*/trial.json"))
    if not files:
        raise FileNotFoundError(f"no KerasTuner trials (trial_*/trial.json) under {folder}")
    rows = []
    for path in files:
        t = json.loads(path.read_text())
        metrics = t.get("metrics", {}).get("metrics", {})
        best = {name: m["observations"][-1]["value"][0] for name, m in metrics.items() if m.get("observations")}
        rows.append({"trial": t["trial_id"], "status": t["status"], **best,
                     **t["hyperparameters"]["values"]})
    return rows


def from_run(run_id: str, tracking_uri: str) -> list[dict[str, Any]]:
    """Rows from the nested trial runs of a search run in MLflow."""
    from histo_exp.tracking import trial_runs

    return [{"trial": r["trial"], "status": r["status"], **r["metrics"], **r["params"]}
            for r in trial_runs(run_id, tracking_uri)]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m histo_exp.trials", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a search run id, or a tuner folder (outputs/<date>/<time>/tuner)")
    parser.add_argument("--csv", help="write here (default: print)")
    parser.add_argument("--tracking-uri", default=local_tracking_uri(),
                        help="MLflow store for run ids (default: ./mlruns/mlflow.db)")
    args = parser.parse_args(argv)
    source = Path(args.source)
    rows = from_tuner_dir(source) if source.is_dir() else from_run(args.source, args.tracking_uri)
    text = trials_csv(rows)
    if args.csv:
        Path(args.csv).write_text(text)
        print(f"{len(rows)} trials -> {args.csv}")
    else:
        sys.stdout.write(text)
    return text


if __name__ == "__main__":
    main()
