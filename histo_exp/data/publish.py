"""Folders that appear whole or not at all, even with several processes building the same one."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path


def build_folder(final: Path, build: Callable[[Path], None], complete: Callable[[Path], bool]) -> bool:
    """Run ``build`` into a private sibling folder, then move it into place as ``final``.

    Parallel jobs (a multirun, a chief and its workers) may build the same folder at once: the
    first to finish wins and the others drop their copy. Returns whether this process's copy is
    the one in place. A killed build leaves only its own ``.partial-<host>-<pid>`` folder behind.
    """
    tmp = final.with_name(f"{final.name}.partial-{socket.gethostname()}-{os.getpid()}")  # shared disks too
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(final)  # replaces an empty folder; fails if another process filled it first
        return True
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not complete(final):
            raise
        return False
