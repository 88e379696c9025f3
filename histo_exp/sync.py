"""``python -m histo_exp.sync folder=<output folder>``: send the MLflow writes a run kept while its
store was away (a server down, a full disk), in the order they were made, each once.

A run says when it kept writes, and where; resuming the same search sends them too. Sending
again after a failure goes on where it stopped. The sending is ``histo_exp.tracking.sync``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from histo_exp.config import CONFIG_DIR, require
from histo_exp.errors import one_line_errors
from histo_exp.tracking import sync

USAGE = "python -m histo_exp.sync folder=<a run's output folder> [tracking_uri=<store>]"


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR / "commands"), config_name="sync")
def main(cfg: DictConfig) -> None:
    with one_line_errors():
        require(cfg, ("folder",), USAGE)
        sync(Path(str(cfg.folder)).absolute(), cfg.tracking_uri)


if __name__ == "__main__":
    main()
