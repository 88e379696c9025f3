"""``python -m histo_exp.prepare data=idc data.root=...``: index and cache only, no training.

Run it once on the machine that holds the data; later runs with the same data settings reuse
the cache. Takes the same config and overrides as ``python -m histo_exp``.
"""

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from histo_exp.config import CONFIG_DIR  # noqa: E402
from histo_exp.data.dataset import load  # noqa: E402

log = logging.getLogger("histo_exp.prepare")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    """Index and cache ``cfg.data``; print per-class and per-patient counts."""
    data = load(cfg.data)
    log.info("prepared:\n%s", data.summary(per_patient=True))


if __name__ == "__main__":
    main()
