"""Output files that are whole or absent: written under a temporary name in the same folder, then renamed.

A full disk (or a stop) in the middle of a write leaves no half file that a later step would take
for a good one (a truncated ``best_model.keras`` is not a zip, and ``predict`` then misreads it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from histo_exp.errors import EnvironmentFault

FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(EnvironmentFault):
    """No room left to write an output: one line that names the folder, the file and the free space."""


def free_space(folder: Path) -> str:
    """The free space of ``folder``'s file system, in words ("unknown" if it cannot be read)."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if free < 1024 or unit == "GiB":
            return f"{free:.0f} {unit}" if unit == "bytes" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown"


def disk_full(path: Path, err: OSError) -> DiskFull:
    """The one-line error for ``err`` (ENOSPC or EDQUOT) while writing ``path``."""
    what = "the disk quota is used up" if err.errno == errno.EDQUOT else "no space left on the device"
    return DiskFull(f"{what} writing {path.name} in {path.parent} ({free_space(path.parent)} free): "
                               "free some space there (or set hydra.run.dir to another disk) and run again")


def partial_name(path: Path) -> Path:
    """The temporary name of ``path`` while it is written: hidden, this process's, same suffix (Keras and
    matplotlib pick the format from it)."""
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def written(path: Path) -> Iterator[Path]:
    """Yield the temporary name to write ``path`` to; renamed to ``path`` if the block ends well, removed if not.

    A full disk is raised as ``DiskFull``; the file that was there before is kept as it was.
    """
    partial = partial_name(path)
    try:
        yield partial
        os.replace(partial, path)
    except OSError as err:
        partial.unlink(missing_ok=True)
        if err.errno in FULL:
            raise disk_full(path, err) from err
        raise
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> Path:
    """``path.write_text(text)``, whole or not at all."""
    with written(path) as partial:
        partial.write_text(text)
    return path


def copy(source: Path, path: Path) -> Path:
    """``shutil.copy(source, path)``, whole or not at all."""
    with written(path) as partial:
        shutil.copyfile(source, partial)
    return path
