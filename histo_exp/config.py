"""Where the Hydra configs live, whichever folder the package runs from."""

from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

# histo_exp/conf links to the repo's conf/ in a checkout and is a real folder in a wheel.
CONFIG_DIR = Path(__file__).resolve().parent / "conf"


def local_tracking_uri() -> str:
    """The MLflow store runs from this folder log to by default (``logger=mlflow``)."""
    return f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}"


def config_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML, search-space specs inline (``{choice: [16, 32]}``)."""
    return yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True), sort_keys=False,
                          default_flow_style=None, width=100)
