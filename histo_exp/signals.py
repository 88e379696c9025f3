"""Ctrl-C and a scheduler's stop (SIGTERM, as `timeout`, Slurm and Kubernetes send) end a run the same
clean way: its MLflow runs are marked KILLED and the process exits with 128 + the signal's number."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Stopped(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so every ``except KeyboardInterrupt`` cleans up for it too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum: int, frame: Any) -> None:
    raise Stopped(signum)


def handle_stops() -> None:
    """Turn SIGINT and SIGTERM into ``KeyboardInterrupt`` (``Stopped`` for SIGTERM) in this process.

    A shell that starts a job in the background leaves SIGINT ignored (and so it would be in the
    children); Ctrl-C must still end the run cleanly.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop)


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports a process the signal ended: 130 Ctrl-C, 143 SIGTERM."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block is done, then deliver the first one.

    For a step that must not be cut in two: a run made in the store whose id the process has not
    yet kept would never be closed (a Ctrl-C there left a trial run RUNNING for ever).
    """
    if threading.current_thread() is not threading.main_thread():  # handlers live in the main thread
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            os.kill(os.getpid(), caught[0])  # raised by the restored handler, as if it came now
