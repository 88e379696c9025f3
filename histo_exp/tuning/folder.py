"""The tuner folder: where KerasTuner keeps a search, who holds it, and which MLflow run it logs to.

The search run's id is kept in the folder (``histo_exp_run.json``), so workers log their trials
under the chief's search run, and a search resumed from its folder goes on in the run it began in.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

RUN_FILE = "histo_exp_run.json"
OUTPUTS = "histo_exp_outputs.txt"  # the output folders of the processes that ran the search


def tuner_folder(cfg: Mapping) -> Path:
    """KerasTuner's project folder: ``<tuner.directory>/<tuner.project_name>``."""
    return Path(cfg["directory"]) / cfg["project_name"]


@contextlib.contextmanager
def search_lock(folder: Path) -> Iterator[None]:
    """Hold the tuner folder for this process: two chiefs (or a chief and a lone run) on one
    folder would each serve an oracle and write the same trials."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Beside the folder, not in it: tuner.overwrite=true deletes the folder while this is held.
    with open(folder.with_name(f".{folder.name}.lock"), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another process is running the search in {folder}; wait for it to end or stop it "
                "(workers join a search with tuner.distributed.role=worker)") from None
        yield


def record_search_run(folder: Path, run_id: str, tracking_uri: str, session: str | None = None) -> None:
    """Write the search run's id into the tuner folder (atomically: workers poll for it)."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{RUN_FILE}.{os.getpid()}"
    partial.write_text(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri, "session": session}))
    partial.replace(folder / RUN_FILE)


def recorded_search_run(folder: Path, tracking_uri: str, session: str | None = None) -> str | None:
    """The search run recorded in ``folder`` for this tracking store (and launch session), if any."""
    try:
        record = json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if record.get("tracking_uri") != tracking_uri or (session and record.get("session") != session):
        return None
    return record.get("run_id")


def wait_for_search_run(folder: Path, tracking_uri: str, is_running: Callable[[str], bool],
                        timeout_s: float, session: str | None = None, poll_s: float = 0.5) -> str:
    """Block until the chief has recorded a running search run in ``folder``; return its id.

    With a ``session`` (the launcher gives every process one), a record left by an earlier
    chief is not taken for this one's.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run_id = recorded_search_run(folder, tracking_uri, session)
        if run_id and is_running(run_id):
            return run_id
        time.sleep(poll_s)
    raise TimeoutError(
        f"no running search from a chief in {folder} after {timeout_s:.0f} s: start the chief "
        "(tuner.distributed.role=chief) with the same tuner.directory and logger.tracking_uri, "
        "or raise tuner.distributed.timeout_s"
    )


def note_output(folder: Path, output_dir: Path) -> None:
    """Add a process's output folder to the search's list (each process of each launch has one), so
    a resume finds the MLflow writes any of them kept while the store was away."""
    folder.mkdir(parents=True, exist_ok=True)
    if str(output_dir) not in map(str, noted_outputs(folder)):
        with open(folder / OUTPUTS, "a") as handle:  # one short append: atomic among processes
            handle.write(f"{output_dir}\n")


def noted_outputs(folder: Path) -> list[Path]:
    """The output folders of every process that has worked on the search in ``folder``."""
    try:
        return [Path(line) for line in (folder / OUTPUTS).read_text().splitlines() if line]
    except FileNotFoundError:
        return []
