"""``python -m histo_exp.sync folder=<output folder>``: send the MLflow writes a run kept while its
store was away (a server down, a full disk), in the order they were made, each once.

A run says when it kept writes, and where; resuming the same search sends them too. Sending
again after a failure goes on where it stopped.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from histo_exp.config import CONFIG_DIR, require
from histo_exp.errors import one_line_errors
from histo_exp.tracking import check_server
from histo_exp.tracking.spool import Spool, reason, unreachable

USAGE = "python -m histo_exp.sync folder=<a run's output folder> [tracking_uri=<store>]"


def sync(folder: Path, tracking_uri: str | None = None) -> int:
    """Send every spool under ``folder`` to its store (or to ``tracking_uri``); how many writes were sent."""
    if not folder.is_dir():
        raise FileNotFoundError(f"folder={folder} is not a folder: pass the output folder of the run "
                                "that kept MLflow writes (it named it when it ended)")
    spools = Spool.waiting(folder)
    if not spools:
        print(f"nothing to send: no MLflow writes are waiting under {folder}")
        return 0
    total = 0
    for spool in spools:
        uri = tracking_uri or spool.store_uri()
        if not uri:
            raise ValueError(f"{spool.folder} does not say which store its writes are for: pass tracking_uri=...")
        check_server(uri)
        pending = spool.pending()
        try:
            sent = spool.send(MlflowClient(tracking_uri=uri))
        except Exception as err:
            if not unreachable(err):
                raise
            done = pending - spool.pending()
            raise ConnectionError(f"{uri} stopped taking writes after {done} of {pending} from {spool.folder} "
                                  f"({reason(err)}): run the same command again once it "
                                  "answers; it goes on from there") from None
        print(f"sent {sent} MLflow write(s) from {spool.folder} to {uri}")
        total += sent
    return total


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR / "commands"), config_name="sync")
def main(cfg: DictConfig) -> None:
    with one_line_errors():
        require(cfg, ("folder",), USAGE)
        sync(Path(str(cfg.folder)).absolute(), cfg.tracking_uri)


if __name__ == "__main__":
    main()
