"""``python -m histo_exp.trials source=<search run id | tuner folder> [csv=trials.csv]``: a row per trial.

From a tuner folder it reads KerasTuner's own trial files; from a run id it reads the search
run's nested trial runs in MLflow (``histo_exp.tuning.trials`` makes the table).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from histo_exp.config import CONFIG_DIR, require
from histo_exp.errors import one_line_errors
from histo_exp.signals import handle_stops
from histo_exp.tuning.trials import from_run, from_tuner_dir, trials_csv

USAGE = "python -m histo_exp.trials source=<search run id | tuner folder> [csv=trials.csv]"


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
    handle_stops()
    main()
