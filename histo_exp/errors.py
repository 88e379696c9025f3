"""The errors histo_exp raises on purpose, and how a command says them: one line on stderr, no traceback.

Two families under one base, as KerasTuner keeps its ``FatalError`` family apart from the rest:

- ``UsageError`` (exit 2, as argparse exits): something the user passed is wrong (a value, a path,
  a choice); the message says what was expected and what to do.
- ``EnvironmentFault`` (exit 1): what was passed is fine, but the world is not (a server that does
  not answer, a full disk, a lock held too long, a search with nothing to keep).

Anything else is a bug and keeps its traceback. Each class also derives from the built-in error a
caller would catch (``ValueError``, ``FileNotFoundError``, ``ConnectionError``, ``TimeoutError``).
``HYDRA_FULL_ERROR=1`` shows the traceback of our own errors too, as for Hydra's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator

from omegaconf.errors import OmegaConfBaseException

USAGE_EXIT = 2  # as argparse and most CLIs exit on a usage error
FAULT_EXIT = 1
# What the operating system says about the machine, not about our code: a full disk, a read-only folder.
MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class HistoExpError(Exception):
    """An error histo_exp raises on purpose; its message is the whole story."""

    exit_code = FAULT_EXIT


class UsageError(HistoExpError, ValueError):
    """A value, a path or a choice the user passed is wrong: one line, exit 2."""

    exit_code = USAGE_EXIT


class PathNotFound(UsageError, FileNotFoundError):
    """A path the user passed is not there, or is not the kind of thing expected."""


class EnvironmentFault(HistoExpError, RuntimeError):
    """The input is fine but the machine or a service is not: one line, exit 1."""


class Unreachable(EnvironmentFault, ConnectionError):
    """A server (an MLflow tracking server, a KerasTuner chief) does not answer."""


class WaitedTooLong(EnvironmentFault, TimeoutError):
    """Another process held a lock, or did not show up, for longer than we wait."""


class NothingToKeep(EnvironmentFault):
    """A command ran but produced nothing usable (every trial of a search failed)."""


def exit_code(err: BaseException) -> int | None:
    """The exit code of an error said in one line; None for a bug (its traceback is shown)."""
    if isinstance(err, HistoExpError):
        return err.exit_code
    if isinstance(err, OmegaConfBaseException):  # a key or interpolation of the composed config
        return USAGE_EXIT
    if isinstance(err, OSError) and err.errno in MACHINE_ERRNOS:
        return FAULT_EXIT
    return None


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Say our own errors (and the machine's: a full disk, a folder we may not write) in one line; a stop
    ends the command with 128 + its signal's number."""
    try:
        yield
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM (``signals.handle_stops``): exit 130 or 143
        from histo_exp.signals import say_stopped

        raise SystemExit(say_stopped(stop)) from None
    except Exception as err:
        code = exit_code(err)
        if code is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(one_line(err), file=sys.stderr, flush=True)
        raise SystemExit(code) from None


def one_line(err: BaseException) -> str:
    """Our own messages as they are; anything else gets its type and where to see more."""
    if isinstance(err, HistoExpError) and str(err):
        return str(err)
    return f"{type(err).__name__}: {err}  (HYDRA_FULL_ERROR=1 shows where it was raised)"
