"""Where the Hydra configs live, whichever folder the package runs from, and how they print."""

from collections.abc import Sequence
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from histo_exp.errors import UsageError

# histo_exp/conf links to the repo's conf/ in a checkout and is a real folder in a wheel.
CONFIG_DIR = Path(__file__).resolve().parent / "conf"


def config_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML, search-space specs inline (``{choice: [16, 32]}``)."""
    return yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True), sort_keys=False,
                          default_flow_style=None, width=100)


def require(cfg: DictConfig, keys: Sequence[str], usage: str) -> None:
    """Stop with the usage line when a mandatory key (``???``) was not given."""
    missing = [k for k in keys if OmegaConf.is_missing(cfg, k)]
    if missing:
        raise UsageError(f"missing {' and '.join(missing)}. Usage: {usage}")
