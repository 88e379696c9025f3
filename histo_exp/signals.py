"""Ctrl-C and a scheduler's stop (SIGTERM, as `timeout`, Slurm and Kubernetes send) end every command the
same clean way: open MLflow runs are marked KILLED and the process exits with 128 + the signal's number.

A stop is never lost. The handler records it and raises ``Stopped`` where the process is; Python drops an
exception raised while it runs a garbage-collection or weakref callback, so the stop stays recorded and
the next safe point (``check``: every batch of a fit, each trial's start and end, each file of a loop)
raises it again. A second signal ends the process at once: what it could not close is left for the
resume, and it says so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

STOPS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """A stop signal, raised where the process is, so every ``except KeyboardInterrupt`` cleans up for it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    """The stops this process has received, and whether a block holds them back (``deferred``)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.held = 0
        self.raised = False  # the stop reached the command's top (``stopping``): cleaning up, not lost
        self.command = False  # ``handle_stops`` ran: a command, which a second stop ends at once


_state = _State()


def _stop(signum: int, frame: Any) -> None:
    if _state.received and _state.command:
        os.write(2, f"\n{signal.Signals(signum).name} again: exiting now without closing its runs; "
                 "resuming the search closes them (marked KILLED) and retries the open trial\n".encode())
        os._exit(128 + signum)
    _state.received.append(signum)
    if not _state.held:
        raise Stopped(signum)


def handle_stops() -> None:
    """Install the handling for SIGINT and SIGTERM in this process (every command's ``__main__`` does).

    A shell that starts a job in the background leaves SIGINT ignored (and so it would be in the
    children); Ctrl-C must still end the run cleanly, so SIGINT is handled whatever it was.
    """
    reset()
    _state.command = True
    for sig in STOPS:
        signal.signal(sig, _stop)


def pending() -> int | None:
    """The stop received and not yet acted on, if any."""
    return _state.received[0] if _state.received and not _state.raised else None


def check() -> None:
    """A safe point: raise the stop received since, if its own raise was lost (or held back)."""
    signum = pending()
    if signum is not None and not _state.held:
        raise Stopped(signum)


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports a process the signal ended: 130 Ctrl-C, 143 SIGTERM."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)


def stopping() -> None:
    """The command is ending for the stop: later safe points let its cleanup run."""
    _state.raised = True


def reset() -> None:
    """Forget received stops (a test that sends one and goes on in the same process)."""
    _state.__init__()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a stop back until the block is done, then raise it.

    For a step that must not be cut in two: a run made in the store whose id the process has not
    yet kept would never be closed (a Ctrl-C there left a trial run RUNNING for ever).
    """
    if threading.current_thread() is not threading.main_thread():  # handlers run in the main thread
        yield
        return
    # Ours for the block, whatever was installed (a library caller's own, Python's default).
    previous = {sig: signal.signal(sig, _stop) for sig in STOPS}
    _state.held += 1
    try:
        yield
    finally:
        _state.held -= 1
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    check()


def say_stopped(interrupt: KeyboardInterrupt, what: str = "") -> int:
    """One line on stderr for a stopped command; its exit code (128 + the signal's number)."""
    stopping()
    name = interrupt.args[0] if interrupt.args else "Ctrl-C"
    print(f"stopped ({name}){': ' + what if what else ''}", file=sys.stderr, flush=True)
    return exit_code(interrupt)
