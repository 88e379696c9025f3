"""Hydra callbacks (configured under ``hydra.callbacks``)."""

from __future__ import annotations

import logging
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class PrepareTrackingStore(Callback):
    """Create the tracking store and experiment once, before a multirun's jobs start.

    Parallel jobs (``hydra/launcher=joblib``) would otherwise race to create the SQLite tables
    and the experiment; afterwards each job only adds runs, which SQLite serialises.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # the paths interpolate hydra:runtime.cwd
        tracker = instantiate(config.logger)
        log.info("tracking store ready for the sweep: %s", tracker.describe())
