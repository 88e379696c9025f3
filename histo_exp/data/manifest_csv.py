"""The manifest reader (``data=manifest``): a CSV with one row per patch, any number of classes.

Columns ``path``, ``label`` (the class name) and ``patient``; optionally ``site``, ``split``
(train, val or test: the part the cohort gives the patch) and ``x``, ``y`` (its top-left pixel on the
slide). A path is relative to the CSV's folder, or absolute. A file that is missing or cannot be read
is no error here: decoding skips it and lists it, as any unreadable file.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

from histo_exp.data.folder import KINDS, Rows, class_order, tree_stamps
from histo_exp.data.index import IMAGE_SUFFIXES, DatasetError, Manifest
from histo_exp.settings import Data

REQUIRED = ("path", "label", "patient")
COLUMNS = (*REQUIRED, "site", "split", "x", "y")
PARTS = ("train", "val", "test")
CSV_SIZE, CSV_TIME = ":csv size", ":csv mtime"  # stamps of the CSV itself (no folder's key: those end in "/")


def check_header(header: list[str] | None, where: Path) -> list[str]:
    """The column names, each known and once, the required ones all there."""
    if not header:
        raise DatasetError(f"{where} is empty: its first line must name the columns ({', '.join(COLUMNS)})")
    names = [name.strip().lower() for name in header]
    for name in names:
        if name not in COLUMNS:
            raise DatasetError(f"{where} has a column {name!r}; a manifest's columns are "
                               f"{', '.join(REQUIRED)} and optionally {', '.join(COLUMNS[len(REQUIRED):])}")
        if names.count(name) > 1:
            raise DatasetError(f"{where} has the column {name!r} twice")
    missing = [name for name in REQUIRED if name not in names]
    if missing:
        raise DatasetError(f"{where} has no column {missing[0]!r}: a manifest needs {', '.join(REQUIRED)}")
    if ("x" in names) != ("y" in names):
        raise DatasetError(f"{where} has one of the columns x and y: give both, or neither")
    return names


def records(where: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, the row's values by column) for each row of the CSV, blank lines aside."""
    try:
        with open(where, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            names = check_header(next(reader, None), where)
            for values in reader:
                if not any(v.strip() for v in values):
                    continue
                if len(values) != len(names):
                    raise DatasetError(f"{where} line {reader.line_num}: {len(values)} values for the "
                                       f"{len(names)} columns {', '.join(names)}")
                yield reader.line_num, {name: v.strip() for name, v in zip(names, values, strict=True)}
    except UnicodeDecodeError as err:
        raise DatasetError(f"{where} is not UTF-8 text ({err.reason} at byte {err.start}): "
                           "save it as UTF-8") from None
    except csv.Error as err:
        raise DatasetError(f"{where} is not a readable CSV: {err}") from None


def coordinate(row: dict[str, str], name: str, line: str) -> int:
    """Column ``x`` or ``y`` as a pixel; -1 (unknown) when left empty or not given."""
    text = row.get(name, "")
    try:
        return int(text) if text else -1
    except ValueError:
        raise DatasetError(f"{line}: {name} is {text!r}, not a whole number of pixels "
                           "(leave it empty if unknown)") from None


def check_row(row: dict[str, str], line: str, allowed: list[str] | None) -> None:
    """A row's values: every column given filled, the image a kind read, the label and split known ones."""
    empty = next((name for name in row if name not in ("x", "y") and not row[name]), None)
    if empty is not None:
        raise DatasetError(f"{line}: the {empty} is empty; every row needs one")
    if not row["path"].lower().endswith(IMAGE_SUFFIXES):
        raise DatasetError(f"{line}: {row['path']!r} is not a {KINDS} image (by its name)")
    if allowed is not None and row["label"] not in allowed:
        raise DatasetError(f"{line}: label {row['label']!r} is not one of data.classes "
                           f"({', '.join(allowed)})")
    if "split" in row and row["split"].lower() not in PARTS:
        raise DatasetError(f"{line}: split {row['split']!r} is not one of {', '.join(PARTS)}")


def read(cfg: Data, progress: bool = True) -> Manifest:
    """The manifest ``data.manifest`` lists; labels are class names, in ``data.classes`` order when given."""
    where = Path(cfg.manifest or "").expanduser().absolute()
    try:
        info = os.stat(where)  # before reading: a change meanwhile is another cache next time
    except OSError:
        raise DatasetError(f"data.manifest {cfg.manifest!r} is not a file: point it at the CSV") from None
    allowed = [str(name) for name in cfg.classes] if cfg.classes is not None else None
    rows, seen = Rows(), {}
    for number, row in records(where):
        line = f"{where} line {number}"
        check_row(row, line, allowed)
        if row["path"] in seen:
            raise DatasetError(f"{line}: {row['path']!r} is listed already, on line {seen[row['path']]}")
        seen[row["path"]] = number
        part = row["split"].lower() if "split" in row else None
        rows.add(row["path"], row["label"], row["patient"], row.get("site"), part,
                 coordinate(row, "x", line), coordinate(row, "y", line))
    if not rows.paths:
        raise DatasetError(f"{where} lists no patches: one row per patch under its header")
    classes = class_order(rows.labels, cfg.classes,
                          absent=lambda name: f"data.classes lists {name!r}, but no row of {where} has "
                                              "that label",
                          unlisted=lambda name: f"label {name!r} of {where} is not in data.classes")
    stamps = {CSV_SIZE: info.st_size, CSV_TIME: info.st_mtime_ns,
              **tree_stamps(where.parent, rows.paths, within=False)}
    return rows.manifest(where.parent, classes, stamps)
