"""``python -m histo_exp.sync folder=<output folder>``: send the MLflow writes a run kept while its
store was away (a server down, a full disk), in the order they were made, each once.

A run says when it kept writes, and where; resuming the same search sends them too. Sending
again after a failure or a stop (Ctrl-C, SIGTERM: exit 130, 143) goes on where it stopped. The folder
may have moved or been copied since: the writes name their files relative to it. Runs its process
left open (it was killed) end KILLED, with a tag that says so. The sending is ``histo_exp.tracking.sync``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from histo_exp.config import CONFIG_DIR, require
from histo_exp.errors import one_line_errors
from histo_exp.signals import handle_stops
from histo_exp.tracking import sync

USAGE = "python -m histo_exp.sync folder=<a run's output folder> [tracking_uri=<store>]"


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR / "commands"), config_name="sync")
def main(cfg: DictConfig) -> None:
    with one_line_errors():
        require(cfg, ("folder",), USAGE)
        sync(Path(str(cfg.folder)).absolute(), cfg.tracking_uri,
             http_timeout_s=cfg.logger.get("http_timeout_s", 20), http_retries=cfg.logger.get("http_retries", 2))


if __name__ == "__main__":
    handle_stops()
    main()
