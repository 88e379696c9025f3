"""``python -m histo_exp [overrides]``: the Hydra entry point, and the only place Hydra runs."""

import logging

import hydra
from omegaconf import DictConfig

from histo_exp.config import CONFIG_DIR, config_yaml
from histo_exp.errors import one_line_errors
from histo_exp.settings import load as load_settings
from histo_exp.signals import exit_code, handle_stops

log = logging.getLogger("histo_exp")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """Print the resolved config, run the experiment, return test AUC (for sweepers; None for a worker)."""
    log.info("config:\n%s", config_yaml(cfg))
    try:
        with one_line_errors():
            settings = load_settings(cfg)  # a bad value fails here, in seconds, before Keras is imported
            from histo_exp.runner import run

            return run(cfg, settings).get("test_auc")
    except KeyboardInterrupt as stop:
        log.warning("interrupted (%s): the search and its open trial are marked KILLED in MLflow",
                    stop.args[0] if stop.args else "Ctrl-C")
        raise SystemExit(exit_code(stop)) from None


if __name__ == "__main__":
    handle_stops()
    main()
