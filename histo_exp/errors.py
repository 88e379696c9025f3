"""A user's mistake (a path, a config value, a model that is not there) said in one line on stderr,
without a traceback; ``HYDRA_FULL_ERROR=1`` shows the traceback as well, as for Hydra's own errors."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from omegaconf.errors import OmegaConfBaseException

# The errors histo_exp raises for what a user passed; each message says what was wrong and what to do.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               TimeoutError, ConnectionError, OmegaConfBaseException)
USAGE_EXIT = 2  # as argparse and most CLIs exit on a usage error
PACKAGE = Path(__file__).resolve().parent


class NothingToKeep(RuntimeError):
    """A command ran but produced nothing usable (every trial of a search failed): said in one line too."""


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a user's error into its message on stderr and exit code 2 (1 for ``NothingToKeep``)."""
    try:
        yield
    except (*USER_ERRORS, NothingToKeep) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(one_line(err), file=sys.stderr, flush=True)
        raise SystemExit(1 if isinstance(err, NothingToKeep) else USAGE_EXIT) from None


def one_line(err: BaseException) -> str:
    """Our own messages as they are; one raised inside a library gets its type and where to see more."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    ours = tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE)
    if ours and str(err):
        return str(err)
    return f"{type(err).__name__}: {err}  (HYDRA_FULL_ERROR=1 shows where it was raised)"
