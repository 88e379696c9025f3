"""What a split must be able to hold, checked on the labels and groups before any decoding: the fractions,
every class in every part, enough groups, a site per patient, given parts that do not leak."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from histo_exp.data.index import DatasetError

PARTS = ("train", "val", "test")
SITES_NEEDED = ("data.group_by=site needs each patch's site: data.site_pattern (folder) or a site column "
                "(manifest)")


def class_names(classes: Sequence[str] | None, labels: np.ndarray | None = None) -> tuple[str, ...]:
    """The class names ``labels`` index; without names "0", "1", ... (IDC's two when the labels say no more)."""
    if classes:
        return tuple(map(str, classes))
    top = int(labels.max()) if labels is not None and labels.size else 1
    return tuple(str(c) for c in range(max(2, top + 1)))


def every(names: Sequence[str]) -> str:
    return "both classes" if len(names) == 2 else f"all {len(names)} classes"


def _listed(values, most: int = 5) -> str:
    values = [str(v) for v in values]
    more = f" and {len(values) - most} more" if len(values) > most else ""
    return ", ".join(values[:most]) + more


def class_groups(labels: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    """How many groups hold each of the ``n`` classes (a group holding two classes counts for both)."""
    _, inverse = np.unique(groups, return_inverse=True)
    pairs = np.unique(inverse.astype(np.int64).ravel() * n + labels)
    return np.bincount(pairs % n, minlength=n)


def _spread(keys: np.ndarray, values: np.ndarray) -> tuple[str, list[str], int] | None:
    """The first key found with two or more values, its values, and how many keys have several; None
    when each key has one value."""
    names, key_codes = np.unique(keys, return_inverse=True)
    seen, value_codes = np.unique(values, return_inverse=True)
    pairs = np.unique(key_codes.astype(np.int64).ravel() * seen.size + value_codes.ravel())
    several = np.flatnonzero(np.bincount(pairs // seen.size, minlength=names.size) > 1)
    if not several.size:
        return None
    first = several[0]
    return str(names[first]), [str(v) for v in seen[pairs[pairs // seen.size == first] % seen.size]], int(several.size)


def grouping(patients: np.ndarray, sites: np.ndarray | None, group_by: str = "patient") -> np.ndarray:
    """What the split holds out whole: the patients, or (``group_by=site``) the sites. A patient found
    under two sites is an error wherever sites are known."""
    if sites is not None:
        spread = _spread(patients, sites)
        if spread:
            patient, held, count = spread
            more = f" (and {count - 1} more patients)" if count > 1 else ""
            raise DatasetError(f"patient {patient} is under {len(held)} sites ({_listed(held)}){more}: a patient's "
                               "patches must all come from one site; fix the site column or data.site_pattern")
    if group_by == "site":
        if sites is None:
            raise DatasetError(SITES_NEEDED)
        return sites
    return patients


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"data.val_fraction must be between 0 and 1; got {val_fraction}")
    if not 0.0 <= test_fraction < 1.0:
        raise DatasetError(f"data.test_fraction must be at least 0 and below 1; got {test_fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise DatasetError("data.val_fraction + data.test_fraction must leave patches to train on")


def _check_labels(labels: np.ndarray, names: tuple[str, ...]) -> None:
    """Labels index the class names, and at least two classes have patches."""
    if not labels.size:
        raise DatasetError("no patches to split")
    if labels.min() < 0 or labels.max() >= len(names):
        raise DatasetError(f"labels must index the {len(names)} classes ({_listed(names)}); found label "
                           f"{int(labels.max() if labels.max() >= len(names) else labels.min())}")
    present = np.unique(labels)
    if present.size < 2:
        needs = (f"both class {names[0]} and class {names[1]}" if len(names) == 2
                 else f"at least two of the classes {_listed(names)}")
        raise DatasetError(f"all {labels.size} patches are class {names[int(present[0])]}: a classifier "
                           f"needs {needs} patches")


def _check_groups(labels: np.ndarray, groups: np.ndarray, names: tuple[str, ...], needed: tuple[str, ...],
                  group: str) -> None:
    """Enough groups, and each class under at least one group per part."""
    unique = np.unique(groups)
    if unique.size < len(needed):
        raise DatasetError(f"found {unique.size} {group}(s) ({_listed(unique)}); a {group}-level split needs "
                           f"at least {len(needed)} {group}s")
    counts = class_groups(labels, groups, len(names))
    short = np.flatnonzero(counts < len(needed))
    if short.size:
        c = int(short[0])
        holding = np.unique(groups[labels == c])
        raise DatasetError(f"class {names[c]} is found under {counts[c]} {group}(s) ({_listed(holding) or 'none'}); "
                           f"{', '.join(needed)} each need it, so at least {len(needed)}: add {group}s holding "
                           "it or leave the class out")


def check_given(labels: np.ndarray, groups: np.ndarray, parts: np.ndarray, classes: Sequence[str] | None = None,
                group: str = "patient") -> None:
    """Split parts the source gives: train, val or test each; no ``group`` in two parts; train and val
    (and test where there is one) each hold every class."""
    names = class_names(classes, labels)
    parts = np.asarray(parts).astype(str)
    unknown = sorted(set(np.unique(parts).tolist()) - set(PARTS))
    if unknown:
        raise DatasetError(f"the source's split parts must be train, val or test; found {_listed(map(repr, unknown))}")
    spread = _spread(groups, parts)
    if spread:
        key, held, count = spread
        more = f" (and {count - 1} more {group}s)" if count > 1 else ""
        held = sorted(held, key=PARTS.index)
        raise DatasetError(f"{group} {key} is in the given {' and '.join(held)} parts{more}: a {group}'s patches "
                           "must all be in one part; fix the source's split")
    for part in PARTS:
        held = labels[parts == part]
        if not held.size and part == "test":
            continue
        missing = np.flatnonzero(np.bincount(held, minlength=len(names)) == 0)
        if missing.size:
            raise DatasetError(f"the given {part} part holds no class {names[int(missing[0])]} patches"
                               + ("" if held.size else " (it is empty)")
                               + f": train, val and test must each hold {every(names)}; fix the source's split")


def check_splittable(labels: np.ndarray, patients: np.ndarray, val_fraction: float, test_fraction: float, *,
                     classes: Sequence[str] | None = None, group: str = "patient",
                     parts: np.ndarray | None = None) -> None:
    """The fractions, the classes and enough ``patients`` (the groups: patients, or sites with
    ``group="site"``) per class, or the parts the source gives: checked before any decoding."""
    _check_fractions(val_fraction, test_fraction)
    names = class_names(classes, labels)
    _check_labels(labels, names)
    if parts is not None:
        check_given(labels, patients, parts, names, group)
        return
    _check_groups(labels, patients, names, PARTS if test_fraction else PARTS[:2], group)
