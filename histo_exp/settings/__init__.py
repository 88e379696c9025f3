"""Typed settings: the composed Hydra config checked once, before any data is read or any run is made.

``load(cfg)`` turns the config into frozen dataclasses (``schema``) and raises ``UsageError``, one line
that names the key, for a wrong type, a number out of range or a misspelt choice (with the closest
allowed spelling). Why dataclasses built from the composed config rather than Hydra structured
configs in the ConfigStore: most values may be a search-space spec instead of a fixed value
(``model.filters={choice: [16, 32]}``), which OmegaConf's typed nodes cannot hold (no unions), and
OmegaConf checks types only, not ranges or choices. The YAML stays the one place of defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from histo_exp.errors import PathNotFound, UsageError
from histo_exp.settings.fields import Bounds, Searchable, bounded, build
from histo_exp.settings.schema import (
    LOGGERS,
    MODELS,
    OPTIMIZERS,
    TUNER_ONLY,
    Data,
    Distributed,
    Eval,
    Paths,
    Trainer,
    Tuner,
)
from histo_exp.space import check_spec, is_spec

__all__ = ["Bounds", "Data", "Distributed", "Eval", "Paths", "Searchable", "Settings", "Trainer", "Tuner",
           "HYPERBAND_WITH_FOLDS", "check_data", "check_group", "load", "tuner_arguments"]


@dataclass(frozen=True)
class Settings:
    """One experiment's settings; ``model``, ``optimizer`` and ``logger`` stay mappings for ``instantiate``."""

    task_name: str
    paths: Paths
    data: Data
    model: dict[str, Any]
    optimizer: dict[str, Any]
    tuner: Tuner
    trainer: Trainer
    eval: Eval
    logger: dict[str, Any]
    seed: int = bounded(0, 2**32 - 1)


# The groups whose keys depend on the option chosen: the key that names the option, and each option's schema.
BY_OPTION = {"model": ("name", MODELS), "optimizer": ("name", OPTIMIZERS), "logger": ("_target_", LOGGERS)}


def load(cfg: DictConfig | Mapping[str, Any]) -> Settings:
    """Check every value of the composed experiment config and return it typed."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    for name, how in BY_OPTION.items():
        if isinstance(plain.get(name), Mapping):
            check_group(plain[name], name, *how)
    settings = build(Settings, plain, "")
    check_data(settings.data)
    if settings.tuner.target.endswith("Hyperband") and settings.tuner.cv_folds != 1:
        raise UsageError(HYPERBAND_WITH_FOLDS)
    return settings


def check_group(node: Mapping[str, Any], where: str, key: str, schemas: Mapping[str, type]) -> None:
    """A group whose keys depend on its option: checked by that option's schema, else spec by spec."""
    schema = schemas.get(str(node.get(key)))
    if schema is not None:
        build(schema, node, where)
        return
    for name, value in node.items():
        values = value if isinstance(value, list) else [value]
        for i, one in enumerate(values):
            if isinstance(one, Mapping) and is_spec(one):
                check_spec(f"{where}.{name}" + (f"[{i}]" if isinstance(value, list) else ""), one)


HYPERBAND_WITH_FOLDS = ("tuner=hyperband continues a trial from an earlier trial's weights, which with "
                        "tuner.cv_folds > 1 would carry one fold's training patients into another fold's "
                        "validation: use tuner=bayesian or tuner=random with patient folds")


ROOTS = {"idc": "IDC_regular_ps50_idx5, the folder holding <patient_id>/<0|1>/*.png",
         "folder": "the folder holding <class>/<patient>/.../<image>",
         "pcam": "the folder holding camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5 and _meta.csv",
         "manifest": "unused: data.manifest names the CSV"}


def check_data(data: Data) -> None:
    """What no single data value can say: a dataset without its folder, fractions that leave nothing to
    train on. ``data.dataset.load`` asks the same of a group it is given."""
    if data.source == "manifest":
        if not data.manifest:
            raise UsageError("data.manifest is not set: pass data.manifest=/path/to/patches.csv "
                             "(columns path, label, patient[, site, split, x, y]; docs/datasets.md)")
        if not Path(data.manifest).expanduser().is_file():
            raise PathNotFound(f"data.manifest {data.manifest!r} is not a file: point it at the CSV")
    elif data.synthetic is None and not data.root:
        raise UsageError(f"data.root is not set: pass data.root=/path/to/the dataset ({ROOTS[data.source]})")
    elif data.synthetic is None and not Path(data.root).expanduser().is_dir():
        raise PathNotFound(f"data.root {data.root!r} does not exist or is not a folder: point it at the "
                           "dataset's folder (README, 'The real dataset')")
    if data.val_fraction + data.test_fraction >= 1.0:
        raise UsageError(f"data.val_fraction + data.test_fraction must be below 1, to leave patients to train on; "
                         f"got {data.val_fraction} + {data.test_fraction}")


def tuner_arguments(tuner: Tuner) -> dict[str, Any]:
    """The KerasTuner constructor's arguments (``_target_`` first): the tuner group less the runner's keys."""
    args = {"_target_": tuner.target}
    for name, value in vars(tuner).items():
        if name != "target" and name not in TUNER_ONLY and value is not None:
            args[name] = value
    return args
