"""``python -m histo_exp.prepare data=idc data.root=...``: index and cache only, no training; and the
dataset card (``data/card.py``: a mosaic of each class, patches per patient, images found twice) in the
Hydra output folder.

Run it once on the machine that holds the data; later runs with the same data settings reuse
the cache. Takes the same config and overrides as ``python -m histo_exp``.
"""

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from histo_exp.config import CONFIG_DIR
from histo_exp.data.card import write_card
from histo_exp.data.dataset import load
from histo_exp.errors import one_line_errors
from histo_exp.settings import load as load_settings
from histo_exp.signals import handle_stops

log = logging.getLogger("histo_exp.prepare")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    """Index and cache ``cfg.data``; print per-class and per-patient counts; write the dataset card."""
    with one_line_errors():
        settings = load_settings(cfg)
        data = load(settings.data)
        card = write_card(data, Path(settings.paths.output_dir))
    log.info("prepared:\n%s", data.summary(per_patient=True))
    log.info("dataset card: %s", ", ".join(map(str, card)))


if __name__ == "__main__":
    handle_stops()
    main()
