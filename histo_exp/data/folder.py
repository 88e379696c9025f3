"""The folder reader (``data=folder``): ``<root>/<class>/<patient>/.../<image>``, any number of classes.

Also what the readers that gather patches one row at a time share (the CSV manifest's reader imports
it): the image kinds they take, the order of the class names, the regular expressions that name a
patient or a site, a patch's place from its file name, the folders' times, and the manifest built.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histo_exp.data.index import DatasetError, Manifest, images_under
from histo_exp.data.sources import data_root
from histo_exp.settings import Data

KINDS = "PNG, JPEG, TIFF or BMP"
LAYOUT = "<root>/<class>/<patient>/.../<image>"
PLACE = re.compile(r"_x(\d+)_y(\d+)[_.]")  # IDC's names: <patient>_idx5_x<X>_y<Y>_class<0|1>.png
ROWS = ":rows"  # the stamp of what the rows say beyond their paths (no folder's key: those end in "/")
NO_PATIENT = ("set data.patient_pattern to a regular expression on the path below data.root whose first "
              "group is the patient (e.g. '^[^/]+/([^_/]+)_' for <class>/<patient>_<n>.png)")


def place(path: str) -> tuple[int, int]:
    """A patch's top-left pixel on its slide where its file name says it as IDC's do; else (-1, -1)."""
    found = PLACE.search(os.path.basename(path))
    return (int(found[1]), int(found[2])) if found else (-1, -1)


def class_order(found: Iterable[str], wanted: list[str] | None, absent: Callable[[str], str],
                unlisted: Callable[[str], str]) -> tuple[str, ...]:
    """The class names, label 0 first: those ``found`` sorted (as numbers when all are whole numbers), or
    as ``data.classes`` (``wanted``) lists them, once each, all found and no other; ``absent`` and
    ``unlisted`` say where a name is missing."""
    found = set(found)
    if wanted is None:
        numbers = all(name.isascii() and name.isdigit() for name in found)  # "2" before "10"
        return tuple(sorted(found, key=lambda name: (int(name), name) if numbers else (0, name)))
    wanted = [str(name) for name in wanted]
    twice = next((name for name in wanted if wanted.count(name) > 1), None)
    if twice is not None:
        raise DatasetError(f"data.classes lists {twice!r} twice ({wanted}): list each class once, "
                           "in label order")
    for name in wanted:
        if name not in found:
            raise DatasetError(absent(name))
    for name in sorted(found):
        if name not in wanted:
            raise DatasetError(unlisted(name))
    return tuple(wanted)


def compile_pattern(text: str | None, key: str) -> re.Pattern | None:
    """``data.<key>`` compiled (None when unset): a regular expression with at least one group."""
    if not text:
        return None
    try:
        pattern = re.compile(text)
    except re.error as err:
        raise DatasetError(f"data.{key} {text!r} is not a regular expression: {err}") from None
    if pattern.groups < 1:
        raise DatasetError(f"data.{key} {text!r} has no group: put the part that names it in parentheses, "
                           "e.g. '^[^/]+/([^/]+)/'")
    return pattern


def first_group(pattern: re.Pattern, key: str, path: str) -> str:
    """The first group of ``pattern`` searched in ``path`` (with ``/`` between folders); an error names
    the path it does not match."""
    found = pattern.search(path.replace(os.sep, "/"))
    if found is None or not found[1]:
        raise DatasetError(f"data.{key} {pattern.pattern!r} does not match {path!r}"
                           + (" (its first group is empty)" if found else "")
                           + ": every image's path below the root must name it")
    return found[1]


def tree_stamps(root: Path, paths: Iterable[str], within: bool) -> dict[str, int]:
    """The modification time of each folder that holds one of ``paths`` (relative to ``root`` or
    absolute), keyed ``"<folder>/"``, and with ``within`` of every folder between it and ``root``:
    adding, removing or renaming a file changes one of them. A folder that is gone is left out."""
    folders: set[str] = set()
    for path in paths:
        folder = os.path.dirname(path)
        while folder not in folders:
            folders.add(folder)
            if not within or not folder or os.path.isabs(folder):
                break
            folder = os.path.dirname(folder)
    if within:
        folders.add("")
    stamps = {}
    for folder in sorted(folders):
        try:
            stamps[folder + "/"] = os.stat(root / folder).st_mtime_ns
        except OSError:
            continue
    return stamps


@dataclass
class Rows:
    """Patches gathered one at a time (label by name), then made a ``Manifest``."""

    paths: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    sites: list[str | None] = field(default_factory=list)
    parts: list[str | None] = field(default_factory=list)
    x: list[int] = field(default_factory=list)
    y: list[int] = field(default_factory=list)

    def add(self, path: str, label: str, patient: str, site: str | None = None, part: str | None = None,
            x: int = -1, y: int = -1) -> None:
        columns = (self.paths, self.labels, self.patients, self.sites, self.parts, self.x, self.y)
        for column, value in zip(columns, (path, label, patient, site, part, x, y), strict=True):
            column.append(value)

    def by_patient(self) -> Rows:
        """The rows patient by patient, each patient's class folder by class folder, as IDC's listing
        orders them: the same patches laid out as a folder tree are then the same rows, split and batches."""
        order = sorted(range(len(self.paths)), key=lambda i: (self.patients[i], self.labels[i],
                                                             os.path.basename(self.paths[i]), self.paths[i]))
        columns = (self.paths, self.labels, self.patients, self.sites, self.parts, self.x, self.y)
        return Rows(*([column[i] for i in order] for column in columns))

    def manifest(self, root: Path, classes: tuple[str, ...], stamps: dict[str, int],
                 ignored: list[str] | None = None) -> Manifest:
        """The manifest of these rows, labels indexing ``classes``; ``stamps`` gains a digest of what
        the rows say beyond their paths (classes, labels, patients, sites, parts), so that another
        reading of the same files (another data.patient_pattern, say) is another cache and split."""
        number = {name: i for i, name in enumerate(classes)}
        kind = np.int8 if len(classes) < 128 else np.int32
        labels = np.array([number[name] for name in self.labels], dtype=kind)
        sites = np.array(self.sites) if any(site is not None for site in self.sites) else None
        parts = np.array(self.parts) if any(part is not None for part in self.parts) else None
        said = hashlib.sha256("\0".join(map(repr, (classes, self.labels, self.patients, self.sites,
                                                   self.parts))).encode())
        return Manifest(
            root=root, paths=self.paths, patients=np.array(self.patients), x=np.array(self.x, dtype=np.int32),
            y=np.array(self.y, dtype=np.int32), labels=labels,
            stamps={**stamps, ROWS: int.from_bytes(said.digest()[:8], "big")}, ignored=ignored or [],
            classes=classes, sites=sites, parts=parts,
        )


def folder_root(root: str | None) -> Path:
    """``data.root``, which must be a folder."""
    path = Path(root or "").expanduser()
    if not root or not path.is_dir():
        raise DatasetError(f"data.root {root!r} does not exist or is not a folder: point it at the folder "
                           f"laid out as {LAYOUT}")
    return path


def class_folders(root: Path) -> list[str]:
    """The folders right below ``root`` (links followed), hidden ones (``.git``) aside."""
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def patient_of(path: str, parts: list[str], pattern: re.Pattern | None) -> str:
    """The patient of the image at ``path`` (its folder names ``parts``): the first group of
    ``data.patient_pattern``, else the folder right below the class folder."""
    if pattern is not None:
        return first_group(pattern, "patient_pattern", path)
    if len(parts) < 3:
        raise DatasetError(f"{path!r} lies right in class folder {parts[0]!r}, with no patient folder "
                           f"(expected {LAYOUT}): move it into one, or {NO_PATIENT}")
    return parts[1]


def read(cfg: Data, progress: bool = True) -> Manifest:
    """The manifest of ``data.root`` laid out as ``<root>/<class>/<patient>/.../<image>``."""
    root = folder_root(data_root(cfg))  # the generated set for data=synthetic with more than two classes
    folders = class_folders(root)
    classes = class_order(
        folders, cfg.classes,
        absent=lambda name: f"data.classes lists {name!r}, but {str(root)!r} has no folder of that name "
                            f"(its class folders: {', '.join(folders) or 'none'})",
        unlisted=lambda name: f"{str(root)!r} has a class folder {name!r} that data.classes "
                              f"({', '.join(map(str, cfg.classes))}) does not list: add it there, "
                              "or move the folder away",
    )
    patients = compile_pattern(cfg.patient_pattern, "patient_pattern")
    sites = compile_pattern(cfg.site_pattern, "site_pattern")
    rows, ignored = Rows(), []
    for path in images_under(root):
        parts = path.replace(os.sep, "/").split("/")
        if parts[0].startswith("."):  # a hidden folder's (.ipynb_checkpoints)
            ignored.append(path)
            continue
        if len(parts) == 1:
            raise DatasetError(f"{path!r} lies right in data.root {str(root)!r}, in no class folder: "
                               f"expected {LAYOUT}")
        site = first_group(sites, "site_pattern", path) if sites else None
        rows.add(path, parts[0], patient_of(path, parts, patients), site, None, *place(path))
    held = set(rows.labels)
    empty = [name for name in classes if name not in held]
    if empty or not rows.paths:
        where = f"class folder {empty[0]!r} under {str(root)!r}" if empty else f"{str(root)!r}"
        raise DatasetError(f"{where} holds no images ({KINDS}): expected {LAYOUT}")
    return rows.by_patient().manifest(root, classes, tree_stamps(root, rows.paths, within=True), ignored)
