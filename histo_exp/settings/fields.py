"""How a setting is declared (type, allowed choices, range) and checked: one rule for every group.

A field's type says what a value may be: ``int``, ``float``, ``bool``, ``str``, a ``Literal`` of
choices, a union of those (``int | Literal["auto"]``), a list, a nested settings dataclass, or
``Searchable[T]``: a fixed ``T`` or a search-space spec (``{choice: [...]}``, ``{min, max}``) whose
every value is a ``T``. ``bounded`` declares a number's range on the field. Dataclass fields carry no
defaults: the YAML under ``conf/`` is the one place they live.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union

from histo_exp.errors import UsageError
from histo_exp.space import SearchSpaceError, check_spec, is_spec

T = TypeVar("T")


class Searchable(typing.Generic[T]):
    """A ``T`` fixed in the config, or a search-space spec over values of ``T`` (``histo_exp.space``)."""


@dataclass(frozen=True)
class Bounds:
    """A number's allowed range; ``None`` leaves a side open, ``*_open`` excludes the end itself."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def admits(self, value: float) -> bool:
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return not (self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)))

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'above' if self.lo_open else 'at least'} {self.lo:g}"
        if self.lo is None:
            return f"{'below' if self.hi_open else 'at most'} {self.hi:g}"
        left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
        return f"in {left}{self.lo:g}, {self.hi:g}{right}"


def bounded(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
            hi_open: bool = False) -> Any:
    """A required dataclass field whose numbers must lie in the range (``lo_open``: above ``lo``)."""
    return dataclasses.field(metadata={"bounds": Bounds(lo, hi, lo_open, hi_open)})


def bounds_of(field: dataclasses.Field) -> Bounds | None:
    return field.metadata.get("bounds")


def build(cls: type[T], node: Mapping[str, Any], where: str) -> T:
    """``cls`` from a plain mapping: every key known and present, every value of its declared type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    keys = {key.strip("_") if key == "_target_" else key: key for key in node}  # _target_ -> target
    unknown = sorted(set(keys) - set(fields))
    if unknown:
        raise UsageError(f"unknown setting {_dotted(where, unknown[0])}{closest(unknown[0], fields)}; "
                         f"{where or 'the config'} takes {', '.join(sorted(fields))}")
    missing = sorted(name for name, f in fields.items() if name not in keys and f.default is dataclasses.MISSING)
    if missing:
        raise UsageError(f"{_dotted(where, missing[0])} is not set: give it a value (conf/ has each default)")
    values = {name: convert(node[keys[name]], hints[name], _dotted(where, name), bounds_of(field))
              for name, field in fields.items() if name in keys}
    return cls(**values)


def convert(value: Any, kind: Any, key: str, bounds: Bounds | None = None) -> Any:
    """``value`` checked against ``kind`` (and ``bounds``); raises ``UsageError`` that names ``key``."""
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise UsageError(f"{key} must be a group of settings; got {_show(value)}")
        return build(kind, value, key)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Searchable:
        return _searchable(value, args[0], key, bounds)
    if origin in (Union, types.UnionType):
        return _union(value, args, key, bounds)
    if origin is Literal:
        return _choice(value, args, key)
    if kind is dict or origin is dict:  # a group checked by its own option's schema (``check_group``)
        if not isinstance(value, Mapping):
            raise UsageError(f"{key} must be a group of settings; got {_show(value)}")
        return dict(value)
    if origin is list:
        if not isinstance(value, list):
            raise UsageError(f"{key} must be a list; got {_show(value)}")
        return [convert(v, args[0], f"{key}[{i}]", bounds) for i, v in enumerate(value)]
    return value if kind is Any else _scalar(value, kind, key, bounds)


def _choice(value: Any, choices: tuple, key: str) -> Any:
    """One of ``choices`` (``True`` is not ``1``), else an error with the closest spelling."""
    if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices if c == value):
        raise UsageError(f"{key} must be one of {', '.join(map(_show, choices))}; got {_show(value)}"
                         f"{closest(value, choices)}")
    return value


def _scalar(value: Any, kind: type, key: str, bounds: Bounds | None) -> Any:
    number = kind in (int, float)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (number and isinstance(value, bool)):
        raise UsageError(f"{key} must be {_article(kind)}; got {_show(value)}")
    if number and bounds is not None and not (math.isfinite(value) and bounds.admits(value)):
        raise UsageError(f"{key} must be {bounds}; got {_show(value)}")
    return value


def _union(value: Any, options: tuple, key: str, bounds: Bounds | None) -> Any:
    if value is None and type(None) in options:
        return None
    errors = []
    for option in (o for o in options if o is not type(None)):
        try:
            return convert(value, option, key, bounds)
        except UsageError as err:
            errors.append(str(err))
    choices = [a for o in options if typing.get_origin(o) is Literal for a in typing.get_args(o)]
    hint = closest(value, choices) if choices and isinstance(value, str) else ""
    nullable = " or null" if type(None) in options else ""
    said = " or ".join(e.removeprefix(f"{key} must be ").split("; got")[0] for e in errors)
    raise UsageError(f"{key} must be {said}{nullable}; got {_show(value)}{hint}")


def _searchable(value: Any, kind: Any, key: str, bounds: Bounds | None) -> Any:
    if not isinstance(value, Mapping):
        return convert(value, kind, key, bounds)
    if not is_spec(value):
        raise UsageError(f"{key}: expected a fixed value, {{choice: [...]}} or {{min: a, max: b[, log: true]}}; "
                         f"got a mapping with keys {sorted(value)}")
    try:
        check_spec(key, value)
    except SearchSpaceError as err:
        raise UsageError(str(err)) from None
    ends = value["choice"] if "choice" in value else [value["min"], value["max"]]
    for end in ends:
        convert(end, kind, key, bounds)
    return dict(value)


def _dotted(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def closest(value: Any, allowed: Any) -> str:
    """`` (did you mean 'x'?)`` when one allowed spelling is close to ``value``."""
    near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def _article(kind: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(kind, kind.__name__)
