"""A lock file shared by the processes that would otherwise race to make the same thing."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from histo_exp.errors import WaitedTooLong

log = logging.getLogger(__name__)


@contextlib.contextmanager
def lock_file(path: Path, doing: str, timeout_s: float) -> Iterator[None]:
    """Hold the lock file ``path``; say once when another process holds it (``doing`` says what
    that process does), and give up after ``timeout_s`` with what to do.

    An flock: the OS releases it when its holder dies, even by SIGKILL, so a killed process never
    blocks the next; on NFS it serialises processes on different hosts too. The file stays: deleting
    it while others wait would split the lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process that %s (lock %s)", doing, path)
        try:
            lock.acquire(timeout=timeout_s)
        except Timeout:
            raise WaitedTooLong(
                f"another process has held {path} for over {timeout_s:.0f} s while it {doing}: let it "
                f"finish or stop it, then run again; if no process is doing that, delete {path}"
            ) from None
    try:
        yield
    finally:
        lock.release()
