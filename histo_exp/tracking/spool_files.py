"""The files a kept write uploads, named so that a spool's output folder can move or be copied.

A file inside the output folder is named relative to it; one from outside (a trial's curves in the
tuner folder, the data cache's ``skipped.tsv``) may change or go before the sync, so a copy of it is
kept in the spool's ``files/`` folder. A sync finds each again where the output folder is now.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from histo_exp.errors import PathNotFound
from histo_exp.tracking.writes import FILES, Write

COPIES = "files"  # in a spool: the files kept from outside the output folder


def keep_file(path: Path, folder: Path, base: Path) -> str:
    """A file in the output folder ``base`` by its path relative to it; one from outside by a copy kept in
    the spool ``folder``, since it may change or go before the sync. A copy that fails (a full disk) leaves
    nothing half made and raises ``OSError``."""
    path = Path(os.path.abspath(path))
    if path.is_relative_to(base):
        return str(path.relative_to(base))
    copy = folder / COPIES / uuid.uuid4().hex[:12] / path.name
    try:
        copy.parent.mkdir(parents=True)
        if path.is_dir():
            shutil.copytree(path, copy)
        else:
            shutil.copy2(path, copy)
    except OSError:
        shutil.rmtree(copy.parent, ignore_errors=True)
        raise
    return str(copy.relative_to(base))


def located(write: Write, folder: Path, base: Path) -> Write:
    """``write`` with the file it uploads found where the output folder ``base`` is now (a path kept whole,
    as spools made before paths were relative keep them, stays as it is). A file that is gone raises,
    saying what to put back, before any of the write is sent."""
    key = FILES.get(write["op"])
    if not key:
        return write
    path = base / write[key]
    if not path.exists():
        raise PathNotFound(
            f"{path} is not there, and the MLflow writes kept in {folder} upload it ({write['op']} of "
            f"run {write['run']}): put it back (or the output folder where it was when they were kept) "
            "and run the same command again; it goes on from there")
    return {**write, key: str(path)}
