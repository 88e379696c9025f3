"""The search-space notation shared by every config group.

A plain value is fixed; ``{choice: [...]}`` is a categorical; ``{min, max, log, step}``
is an int range (both ends ints) or a float range. Lists are walked element by element,
so ``[{choice: [64, 128]}, 32]`` searches the first entry and fixes the second.
Keys starting with ``_`` (``_target_``) and ``name`` are passed through untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from histo_exp.errors import UsageError

RANGE_KEYS = {"min", "max", "log", "step", "default"}
CHOICE_KEYS = {"choice", "default"}


class SearchSpaceError(UsageError):
    """A config value that is neither a fixed value nor a valid search-space spec."""


def to_plain(node: Any) -> Any:
    """Return a plain (resolved) Python container for an OmegaConf node or a value."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def is_spec(value: Any) -> bool:
    """True for a mapping in the notation (``choice`` or ``min``/``max``)."""
    return isinstance(value, Mapping) and ("choice" in value or {"min", "max"} <= set(value))


def check_spec(name: str, spec: Mapping) -> None:
    """Raise ``SearchSpaceError`` unless ``spec`` is a well-formed choice or range."""
    keys = set(spec)
    if "choice" in spec:
        extra = keys - CHOICE_KEYS
        values = spec["choice"]
        if extra or not isinstance(values, Sequence) or isinstance(values, str) or not values:
            raise SearchSpaceError(
                f"{name}: a choice is written {{choice: [a, b, ...]}} with a non-empty list; "
                f"got {dict(spec)}"
            )
        return
    extra = keys - RANGE_KEYS
    lo, hi = spec["min"], spec["max"]
    if extra or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)):
        raise SearchSpaceError(
            f"{name}: a range is written {{min: a, max: b}} with numbers, optionally "
            f"log: true and step; got {dict(spec)}"
        )
    if lo > hi:
        raise SearchSpaceError(f"{name}: min ({lo}) is larger than max ({hi})")
    if spec.get("log") and lo <= 0:
        raise SearchSpaceError(f"{name}: a log range needs min > 0; got min={lo}")


def declare(hp: Any, name: str, spec: Any) -> Any:
    """Declare one value on a KerasTuner ``HyperParameters`` and return its current value."""
    if not isinstance(spec, Mapping):
        return spec
    if not is_spec(spec):
        raise SearchSpaceError(
            f"{name}: expected a fixed value, {{choice: [...]}} or {{min: a, max: b[, log: true]}}; "
            f"got a mapping with keys {sorted(spec)}"
        )
    check_spec(name, spec)
    if "choice" in spec:
        return hp.Choice(name, list(spec["choice"]), default=spec.get("default"))
    lo, hi = spec["min"], spec["max"]
    sampling = "log" if spec.get("log") else "linear"
    if isinstance(lo, int) and isinstance(hi, int) and not isinstance(spec.get("step"), float):
        return hp.Int(name, lo, hi, step=spec.get("step"), sampling=sampling,
                      default=spec.get("default"))
    return hp.Float(name, float(lo), float(hi), step=spec.get("step"), sampling=sampling,
                    default=spec.get("default"))


def sample(hp: Any, group: Mapping | DictConfig, skip: Sequence[str] = ("name",)) -> dict:
    """Declare every searchable value of a config group and return the group with values.

    Hyperparameter names are the group's keys (``dense_units_2`` for list entries), so a
    trial's parameters read like the YAML they came from.
    """
    plain = to_plain(group)
    out: dict[str, Any] = {}
    for key, value in plain.items():
        if key.startswith("_") or key in skip:
            out[key] = value
        elif isinstance(value, list):
            out[key] = [declare(hp, f"{key}_{i + 1}", v) for i, v in enumerate(value)]
        else:
            out[key] = declare(hp, key, value)
    return out

