"""A search's folder and this process's part in it, decided once.

KerasTuner keeps a search in ``<tuner.directory>/<tuner.project_name>``; several processes may share
it (KerasTuner's distributed protocol: a *chief* serves the oracle over gRPC, *workers* train
trials; a *lone* process does both). Beside KerasTuner's files the folder holds:

- ``histo_exp_run.json``: the MLflow search run it logs to, so workers log their trials under the
  chief's run and a resumed search goes on in the run it began in;
- ``histo_exp_outputs.txt``: the output folder of every process that worked on it, so a resume finds
  the MLflow writes any of them kept while the store was away;
- ``histo_exp_space.json``: the search space it was begun with, so a resume with another space is
  refused rather than recording trials under hyperparameters their models were not built with;
- ``.<project>.lock`` (beside it): held by the one process that leads the search.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from unittest import mock

from histo_exp.errors import EnvironmentFault, WaitedTooLong
from histo_exp.files import write_text
from histo_exp.settings import Tuner

log = logging.getLogger(__name__)

RUN_FILE = "histo_exp_run.json"
SPACE_FILE = "histo_exp_space.json"
OUTPUTS = "histo_exp_outputs.txt"
Role = Literal["lone", "chief", "worker"]


@dataclass(frozen=True)
class SearchFolder:
    """Where a search lives, and this process's role in it (``env``: KerasTuner's variables for it)."""

    path: Path
    role: Role = "lone"
    env: dict[str, str] = field(default_factory=dict)
    session: str | None = None

    @classmethod
    def of(cls, tuner: Tuner) -> SearchFolder:
        """From ``tuner.directory``, ``tuner.project_name`` and ``tuner.distributed``; with no role
        configured, KerasTuner's own variables in the environment decide it (a launcher may set them)."""
        path = Path(tuner.directory) / tuner.project_name
        dist = tuner.distributed
        if dist.role is None:
            tuner_id = os.environ.get("KERASTUNER_TUNER_ID")
            if tuner_id and "KERASTUNER_ORACLE_IP" in os.environ:
                return cls(path, "chief" if "chief" in tuner_id else "worker", {}, dist.session)
            return cls(path, "lone", {}, dist.session)
        if dist.role == "chief":
            tuner_id = "chief"
        elif dist.worker_id is not None:  # a restarted worker with the same id takes back its trial
            tuner_id = f"worker{dist.worker_id}"
        else:
            tuner_id = f"worker-{socket.gethostname()}-{os.getpid()}"
        env = {"KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": dist.host,
               "KERASTUNER_ORACLE_PORT": str(dist.port)}
        return cls(path, dist.role, env, dist.session)

    @contextlib.contextmanager
    def entered(self) -> Iterator[SearchFolder]:
        """KerasTuner's variables for this role, set for the block and restored after it (a multirun
        of several jobs in one process must not inherit the last job's role)."""
        with mock.patch.dict(os.environ, self.env):
            yield self

    @contextlib.contextmanager
    def led(self) -> Iterator[None]:
        """Hold the folder for this process: two chiefs (or a chief and a lone run) on one folder
        would each serve an oracle and write the same trials."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Beside the folder, not in it: tuner.overwrite=true deletes the folder while this is held.
        with open(self.path.with_name(f".{self.path.name}.lock"), "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise EnvironmentFault(
                    f"another process is running the search in {self.path}; wait for it to end or stop it "
                    "(workers join a search with tuner.distributed.role=worker)") from None
            yield

    def ready(self, overwrite: bool) -> None:
        """Start over (``overwrite``) or resume what the folder holds; a worker joins it as it is."""
        if self.role == "worker":
            if overwrite:
                log.warning("tuner.overwrite=true is for the chief; this worker joins the search as it is")
            return
        if not (self.path / "oracle.json").exists():
            return
        if overwrite:
            log.info("tuner.overwrite=true: starting over in %s", self.path)
            shutil.rmtree(self.path)
            return
        log.warning("resuming the search saved in %s (set tuner.overwrite=true to start over)", self.path)
        # KerasTuner reloads only if its own state file is there (tuner0.json alone, chief.json as a
        # chief): resuming a search begun the other way must reload too.
        own = self.path / f"{os.environ.get('KERASTUNER_TUNER_ID', 'tuner0')}.json"
        if not own.exists():
            own.write_text("{}")

    def holds_search(self) -> bool:
        """Whether a search was begun here (KerasTuner's oracle state is saved)."""
        return (self.path / "oracle.json").exists()

    def saved_space(self) -> dict[str, Any] | None:
        """The search space the search was begun with; None for a search begun before it was recorded."""
        try:
            return json.loads((self.path / SPACE_FILE).read_text())
        except FileNotFoundError:
            return None

    def save_space(self, space: dict[str, Any]) -> None:
        """Record the space of a search begun now (a resumed one keeps the record it has)."""
        if self.role != "worker" and self.saved_space() is None:
            self.path.mkdir(parents=True, exist_ok=True)
            write_text(self.path / SPACE_FILE, json.dumps(space, indent=1, sort_keys=True))

    def record_run(self, run_id: str, tracking_uri: str) -> None:
        """Write the search run's id into the folder (atomically: workers poll for it)."""
        self.path.mkdir(parents=True, exist_ok=True)
        partial = self.path / f".{RUN_FILE}.{os.getpid()}"
        partial.write_text(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri, "session": self.session}))
        partial.replace(self.path / RUN_FILE)

    def recorded_run(self, tracking_uri: str, this_launch: bool = False) -> str | None:
        """The search run recorded here for this tracking store, if any; with ``this_launch``, only one
        recorded by this launch's chief (the same ``session``): what a worker may join."""
        try:
            record = json.loads((self.path / RUN_FILE).read_text())
        except (OSError, ValueError):
            return None
        if record.get("tracking_uri") != tracking_uri:
            return None
        if this_launch and self.session and record.get("session") != self.session:
            return None
        return record.get("run_id")

    def wait_for_run(self, tracking_uri: str, is_running: Callable[[str], bool], timeout_s: float,
                     poll_s: float = 0.5) -> str:
        """Block until the chief has recorded a running search run here; return its id.

        With a ``session`` (the launcher gives every process one), a record left by an earlier
        chief is not taken for this one's.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run_id = self.recorded_run(tracking_uri, this_launch=True)
            if run_id and is_running(run_id):
                return run_id
            time.sleep(poll_s)
        raise WaitedTooLong(
            f"no running search from a chief in {self.path} after {timeout_s:.0f} s: start the chief "
            "(tuner.distributed.role=chief) with the same tuner.directory and logger.tracking_uri, "
            "or raise tuner.distributed.timeout_s")

    def note_output(self, output_dir: Path) -> None:
        """Add a process's output folder to the search's list (each process of each launch has one)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if str(output_dir) not in map(str, self.outputs()):
            with open(self.path / OUTPUTS, "a") as handle:  # one short append: atomic among processes
                handle.write(f"{output_dir}\n")

    def outputs(self) -> list[Path]:
        """The output folders of every process that has worked on the search."""
        try:
            return [Path(line) for line in (self.path / OUTPUTS).read_text().splitlines() if line]
        except FileNotFoundError:
            return []
