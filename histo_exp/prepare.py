"""``python -m histo_exp.prepare data=idc data.root=...``: index and cache only, no training.

Run it once on the machine that holds the data; later runs with the same data settings reuse
the cache. Takes the same config and overrides as ``python -m histo_exp``.
"""

import logging

import hydra
from omegaconf import DictConfig

from histo_exp.config import CONFIG_DIR
from histo_exp.data.dataset import load
from histo_exp.errors import one_line_errors
from histo_exp.settings import load as load_settings
from histo_exp.signals import handle_stops

log = logging.getLogger("histo_exp.prepare")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    """Index and cache ``cfg.data``; print per-class and per-patient counts."""
    with one_line_errors():
        data = load(load_settings(cfg).data)
    log.info("prepared:\n%s", data.summary(per_patient=True))


if __name__ == "__main__":
    handle_stops()
    main()
