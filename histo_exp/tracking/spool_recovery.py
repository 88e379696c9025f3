"""What a process that kept writes in a spool and then ended may have left behind there.

While it writes it holds ``writer.lock`` (``hold``), so a free lock says it has ended. A kill can cut
the last line of ``writes.jsonl`` short, and leaves the runs it had open RUNNING in the store. The
writer notes its open runs as it goes (``open.json``), so a later process (the next run in the same
folder, or a sync) can cut off the torn line, say what it held, and close those runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from histo_exp.tracking.writes import Write

log = logging.getLogger(__name__)


def hold(path: Path) -> IO | None:
    """The lock file ``path``, held (an flock) if no other live process holds it; else ``None``. The OS frees
    the lock of a process that ends, however it ends: a free lock says its writer has ended."""
    try:
        handle = open(path, "a")
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def torn_write(tail: bytes) -> str:
    """What a write cut short held, as far as it can be read: its kind and its run."""
    text = tail.decode(errors="replace")
    op = re.search(r'"op": "(\w+)"', text)
    run = re.search(r'"(?:run|id)": "([^"]+)(")?', text)  # the id may be cut short too
    what = f"a {op.group(1)} write" if op else "a write whose kind cannot be read"
    of = f" of run {run.group(1)}{'' if run.group(2) else '...'}" if run else ""
    return f"{what}{of}, {len(tail)} bytes"


def mend(path: Path) -> None:
    """Cut off a last line of the writes file ``path`` that its process did not finish (killed while
    writing it), saying what it held; a whole line only missing its newline gets one. Only while no one
    else writes there: theirs may be a line being written."""
    try:
        with open(path, "rb") as handle:
            if handle.seek(0, os.SEEK_END) == 0:
                return
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) == b"\n":
                return
            handle.seek(0)
            data = handle.read()
    except FileNotFoundError:
        return
    start = data.rfind(b"\n") + 1
    with contextlib.suppress(ValueError):
        json.loads(data[start:])  # whole, only its newline missing
        with open(path, "ab") as handle:
            handle.write(b"\n")
        return
    log.warning("the last MLflow write kept in %s was cut short when its process ended (%s): it is skipped",
                path.parent, torn_write(data[start:]))
    os.truncate(path, start)


def note_open(path: Path, runs: Iterable[str], after: int) -> None:
    """Note in ``path`` the runs open once the first ``after`` writes are kept; written whole or not at all
    (a kill while writing leaves the last note)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps({"runs": sorted(set(runs)), "after": after}))
    partial.replace(path)


def noted_open(path: Path) -> dict[str, Any]:
    """The note ``note_open`` left in ``path``; none (or one that cannot be read) notes no run."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"runs": [], "after": 0}


def left_open(noted: dict[str, Any], writes: list[Write], ids: dict[str, str]) -> list[str]:
    """The runs open after ``writes``: those ``noted``, opened or closed by the writes kept after the note;
    named as the store names them (``ids``) once their ``create_run`` is sent. Read the note before the
    writes: a writer keeps a write, then notes it."""
    after = int(noted["after"])
    state = dict.fromkeys((ids.get(r, r) for r in noted["runs"]), True)
    if after > len(writes):  # the note counts writes that are not there (a tail lost): every run may be open
        state |= {ids.get(r, r): True for w in writes for r in named_runs(w)}
        after = 0
    for write in writes[after:]:
        run = write.get("id") if write["op"] == "create_run" else write.get("run")
        if write["op"] in ("create_run", "set_status", "close_orphan"):
            state[ids.get(run, run)] = write["op"] == "create_run" or write.get("end_time") is None
    return [run for run, is_open in state.items() if is_open and run]


def named_runs(write: Write) -> list[str]:
    """The runs ``write`` names: its own, and a new run's parent."""
    runs = [write.get("run")]
    if write["op"] == "create_run":
        runs.append(write["tags"].get(MLFLOW_PARENT_RUN_ID))
    return [run for run in runs if run]
