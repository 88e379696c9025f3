"""Every value a user can pass is checked when the config is composed: types, ranges, choices.

The walk covers every numeric key and every choice key of the composed configs of each option,
from the declared schema (``histo_exp.settings.schema``): a key without a declared range fails here.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from histo_exp.config import CONFIG_DIR
from histo_exp.errors import UsageError
from histo_exp.settings import BY_OPTION, Settings, load, tuner_arguments
from histo_exp.settings.fields import Bounds, Searchable, bounds_of
from histo_exp.space import is_spec

# Together these choose every option of every group that has a schema of its own.
HERE = Path(__file__).parent  # a folder that exists, for data.root
OPTIONS = {
    "defaults": [],
    "idc-hyperband-sgd-none": ["data=idc", f"data.root={HERE}", "tuner=hyperband", "optimizer=sgd", "logger=none"],
    "random-rmsprop": ["tuner=random", "optimizer=rmsprop", "experiment=idc_original", f"data.root={HERE}"],
}


# Values that must move with the one under test, for the pair to stay valid together.
COMPANIONS = {"data.val_fraction": {"data.test_fraction": 0.0}, "data.test_fraction": {"data.val_fraction": 1e-9}}


def composed(overrides: list[str]) -> dict[str, Any]:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("config", overrides=["paths.work_dir=/w", "paths.output_dir=/w/out", *overrides])
        return OmegaConf.to_container(cfg, resolve=True)
    finally:
        GlobalHydra.instance().clear()


CONFIGS = {name: composed(overrides) for name, overrides in OPTIONS.items()}


def declared(key: str, plain: Mapping[str, Any]) -> tuple[Any, Bounds | None]:
    """The declared type and range of a dotted key, from the schema of the options ``plain`` chose."""
    parts = key.split(".")
    cls: Any = Settings
    if parts[0] in BY_OPTION:
        option, schemas = BY_OPTION[parts[0]]
        cls, parts = schemas[plain[parts[0]][option]], parts[1:]
    for i, part in enumerate(parts):
        field = {f.name: f for f in dataclasses.fields(cls)}["target" if part == "_target_" else part]
        hint = typing.get_type_hints(cls)[field.name]
        inner = [a for a in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(a)]
        if i == len(parts) - 1 or not inner:
            return hint, bounds_of(field)
        cls = inner[0]
    raise AssertionError(key)


def leaves(plain: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted keys and values, a search-space spec being one value (``tuner.objective``: KerasTuner's)."""
    for key, value in plain.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and not is_spec(value):
            if name != "tuner.objective":
                yield from leaves(value, name + ".")
        else:
            yield name, value


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric(value: Any) -> bool:
    """A number, a range or choice of numbers, or a list of those."""
    if isinstance(value, list):
        return bool(value) and all(numeric(v) for v in value)
    if isinstance(value, Mapping):
        ends = value.get("choice") or [value.get("min"), value.get("max")]
        return all(is_number(v) for v in ends)
    return is_number(value)


def kinds(hint: Any) -> set[type]:
    """The scalar types a hint admits (through unions, Searchable and lists)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Searchable, list) or origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return set().union(*(kinds(a) for a in args))
    return {hint} if isinstance(hint, type) else set()


def choices(hint: Any) -> list[str]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return [a for a in args if isinstance(a, str)]
    return [c for a in args for c in choices(a)] if args else []


def with_value(plain: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(plain)
    for name, other in {key: value, **COMPANIONS.get(key, {})}.items():
        node = changed
        *path, last = name.split(".")
        for part in path:
            node = node[part]
        node[last] = [other] * len(node[last]) if isinstance(node[last], list) else other
    return changed


def edges(kind: type, bounds: Bounds) -> tuple[list[Any], list[Any]]:
    """Values at the declared ends (valid) and just past them (invalid)."""
    step = 1 if kind is int else 1e-6
    valid, invalid = [], []
    if bounds.lo is not None:
        valid.append(bounds.lo + step if bounds.lo_open else bounds.lo)
        invalid.append(bounds.lo if bounds.lo_open else bounds.lo - step)
    if bounds.hi is not None:
        valid.append(bounds.hi - step if bounds.hi_open else bounds.hi)
        invalid.append(bounds.hi if bounds.hi_open else bounds.hi + step)
    return [kind(v) for v in valid], [kind(v) for v in invalid]


NUMERIC = [(name, key) for name, plain in CONFIGS.items() for key, value in leaves(plain) if numeric(value)]


CHOICE = [(name, key) for name, plain in CONFIGS.items() for key, _ in leaves(plain)
          if choices(declared(key, plain)[0])]


def test_every_option_of_every_group_loads_and_keeps_its_values():
    for name, plain in CONFIGS.items():
        settings = load(plain)
        assert settings.trainer.epochs == plain["trainer"]["epochs"], name
        assert tuner_arguments(settings.tuner)["_target_"] == plain["tuner"]["_target_"]
        assert not {"cv_folds", "cv_auto_folds", "cv_auto_max_patients", "distributed"} & set(
            tuner_arguments(settings.tuner)), "the runner's keys are not KerasTuner's arguments"


@pytest.mark.parametrize("name, key", NUMERIC, ids=[f"{n}:{k}" for n, k in NUMERIC])
def test_every_numeric_key_takes_its_declared_range_and_nothing_past_it(name, key):
    plain = CONFIGS[name]
    hint, bounds = declared(key, plain)
    assert bounds is not None, f"{key} is a number without a declared range"
    kind = int if kinds(hint) & {int} and float not in kinds(hint) else float
    valid, invalid = edges(kind, bounds)
    assert valid, f"{key}: a range with no end"
    for value in valid:
        load(with_value(plain, key, value))
    for value in [*invalid, "abc", *([1.5] if kind is int else []), True]:
        with pytest.raises(UsageError, match=key.replace(".", r"\.")):
            load(with_value(plain, key, value))


@pytest.mark.parametrize("name, key", CHOICE, ids=[f"{n}:{k}" for n, k in CHOICE])
def test_every_choice_key_refuses_a_misspelling_and_names_the_closest_choice(name, key):
    plain = CONFIGS[name]
    choice = choices(declared(key, plain)[0])[0]
    misspelt = choice[:-1] + ("x" if choice[-1] != "x" else "y")
    with pytest.raises(UsageError, match=rf"{key}.*did you mean '{choice}'\?"):
        load(with_value(plain, key, misspelt))


def test_search_space_specs_are_checked_against_the_range():
    plain = CONFIGS["defaults"]
    load(with_value(plain, "model.dropout", {"min": 0.1, "max": 0.5}))
    load(with_value(plain, "model.filters", {"choice": [8, 16]}))
    load(with_value(plain, "data.augment.hed", {"choice": [0, 0.05]}))
    with pytest.raises(UsageError, match=r"model\.dropout must be in \[0, 1\); got 1\.5"):
        load(with_value(plain, "model.dropout", {"min": 0.1, "max": 1.5}))
    with pytest.raises(UsageError, match=r"min \(0\.5\) is larger than max \(0\.1\)"):
        load(with_value(plain, "model.dropout", {"min": 0.5, "max": 0.1}))
    with pytest.raises(UsageError, match=r"model\.head must be one of 'flatten', 'gap'"):
        load(with_value(plain, "model.head", {"choice": ["flatten", "gapp"]}))


def test_unknown_and_missing_keys_say_which():
    plain = CONFIGS["defaults"]
    extra = copy.deepcopy(plain)
    extra["trainer"]["epoch"] = 3
    with pytest.raises(UsageError, match=r"unknown setting trainer\.epoch \(did you mean 'epochs'\?\)"):
        load(extra)
    del extra["trainer"]["epoch"], extra["trainer"]["epochs"]
    with pytest.raises(UsageError, match=r"trainer\.epochs is not set"):
        load(extra)


def test_what_no_single_value_can_say_is_checked_together():
    plain = copy.deepcopy(CONFIGS["defaults"])
    plain["data"] |= {"val_fraction": 0.5, "test_fraction": 0.5}
    with pytest.raises(UsageError, match=r"val_fraction \+ data\.test_fraction must be below 1"):
        load(plain)
    hyperband = CONFIGS["idc-hyperband-sgd-none"]
    with pytest.raises(UsageError, match="tuner=hyperband"):
        load(with_value(hyperband, "tuner.cv_folds", 2))


def test_a_dataset_needs_its_folder():
    plain = CONFIGS["idc-hyperband-sgd-none"]
    with pytest.raises(UsageError, match=r"data\.root is not set: pass data\.root="):
        load(with_value(plain, "data.root", None))
    with pytest.raises(FileNotFoundError, match=r"data\.root '/no/such/folder' does not exist"):
        load(with_value(plain, "data.root", "/no/such/folder"))


def test_a_model_without_a_schema_has_its_specs_checked_only():
    plain = with_value(CONFIGS["defaults"], "model.name", "my_net")
    plain["model"]["width"] = {"choice": [1, 2]}
    assert load(plain).model["width"] == {"choice": [1, 2]}
    plain["model"]["depth"] = {"min": 3, "max": 1}
    with pytest.raises(UsageError, match=r"model\.depth: min \(3\) is larger than max \(1\)"):
        load(plain)


def test_zero_is_valid_where_it_means_something():
    plain = CONFIGS["defaults"]
    for key in ("data.test_fraction", "data.augment.hed", "eval.max_maps", "eval.bootstrap",
                "tuner.num_initial_points", "trainer.verbose"):
        load(with_value(plain, key, 0))
    assert math.isclose(load(with_value(plain, "eval.threshold", 0.5)).eval.threshold, 0.5)
