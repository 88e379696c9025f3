"""Folders that appear whole or not at all, built once even when several processes want the same one."""

from __future__ import annotations

import logging
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

from histo_exp.locks import lock_file

log = logging.getLogger(__name__)

# A full IDC ingest takes under a minute warm but can take tens of minutes from a cold network
# disk; two hours fails only a wait on a builder that is stuck, not one that is slow.
WAIT_S = 2 * 3600.0


def build_folder(final: Path, build: Callable[[Path], None], complete: Callable[[Path], bool],
                 timeout_s: float = WAIT_S, *, damage: Callable[[Path], str | None] | None = None) -> bool:
    """Build ``final`` once: run ``build`` into a private sibling folder, then rename it into place.

    Parallel jobs (a multirun, a chief and its workers) may want the same folder at once: a lock
    beside it lets one build while the others wait and then reuse its folder. Returns whether
    this process's copy is the one in place: False when another process built it (a waiter then
    finds it complete and builds nothing). A killed build leaves a ``.partial-<host>-<pid>``
    folder behind; the next build removes it. With ``damage`` (what is wrong with a ``final``
    that is there but not complete), such a folder is logged, moved aside and built again;
    without it, one that is not empty makes the build fail.
    """
    if complete(final):
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    with lock_file(lock_path(final), f"builds {final}", timeout_s):
        if complete(final):
            return False
        if damage is not None and final.exists():
            _discard(final, damage(final))
        _sweep_partials(final)
        return _build_and_rename(final, build, complete)


def lock_path(final: Path) -> Path:
    """The lock file of ``final``'s builders: beside it, so renaming the folder leaves it alone."""
    return final.with_name(f"{final.name}.lock")


def _partials(final: Path) -> list[Path]:
    prefix = f"{final.name}.partial-"
    return [p for p in final.parent.iterdir() if p.name.startswith(prefix)]


def _size(folder: Path) -> int:
    return sum(os.path.getsize(os.path.join(top, f)) for top, _, files in os.walk(folder) for f in files)


def _sweep_partials(final: Path) -> None:
    """Remove the partial folders of dead builds. Call with the lock held: then no live process
    on any host that shares the lock is writing one, whatever host and pid its name carries."""
    leftovers = _partials(final)
    if not leftovers:
        return
    reclaimed = sum(_size(p) for p in leftovers)
    for p in leftovers:
        shutil.rmtree(p, ignore_errors=True)
    log.info("removed %d partial folder(s) of killed builds of %s: %.1f MiB reclaimed",
             len(leftovers), final, reclaimed / 2**20)


def _discard(final: Path, why: str) -> None:
    """Move a damaged ``final`` aside and remove it (call with the lock held). A reader that has its
    files open keeps them; if the removal is cut short, the next build's sweep finishes it."""
    log.warning("%s cannot be reused (%s): building it again", final, why)
    aside = final.with_name(f"{final.name}.partial-{socket.gethostname()}-{os.getpid()}-damaged")
    final.rename(aside)
    shutil.rmtree(aside, ignore_errors=True)


def _build_and_rename(final: Path, build: Callable[[Path], None], complete: Callable[[Path], bool]) -> bool:
    tmp = final.with_name(f"{final.name}.partial-{socket.gethostname()}-{os.getpid()}")  # shared disks too
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(final)  # replaces an empty folder; fails if one that ignores the lock filled it first
        return True
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not complete(final):
            raise
        return False
