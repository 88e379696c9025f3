"""``python -m histo_exp [overrides]``: the Hydra entry point, and the only place Hydra runs."""

import logging
import signal

import hydra
from omegaconf import DictConfig

from histo_exp.config import CONFIG_DIR, config_yaml

log = logging.getLogger("histo_exp")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """Print the resolved config, run the experiment, return test AUC (for sweepers; None for a worker)."""
    from histo_exp.runner import run

    log.info("config:\n%s", config_yaml(cfg))
    try:
        return run(cfg).get("test_auc")
    except KeyboardInterrupt:
        log.warning("interrupted: the search and its open trial are marked KILLED in MLflow")
        raise SystemExit(130) from None


if __name__ == "__main__":
    # Started from a background shell, SIGINT arrives ignored; Ctrl-C must still end the run cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
