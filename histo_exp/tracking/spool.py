"""Writes the MLflow store could not take, kept in the run's output folder until it is back.

The idea of offline trackers (``wandb sync``, ``neptune sync``): training goes on, what was not
sent is kept on disk, and a sync sends it later. MLflow's own async logging only queues in memory,
so a crash would lose it. A JSON line per write in ``writes.jsonl``, in the order the writes were
made, each flushed to disk as it is kept (a kill loses none); ``sent.json`` counts the ones sent and
maps the offline ids to the ones the store gave, so a sync that stops half-way (the store went away
again, a Ctrl-C) goes on where it stopped and sends nothing twice.

The folder travels: a file inside the output folder is named relative to it, and one from outside
(a trial's curves in the tuner folder, the data cache's ``skipped.tsv``) is copied into ``files/``
when its write is kept, so a moved or copied output folder syncs from where it is. The process that
writes here holds ``writer.lock`` and notes the runs it has open (``open.json``): a sync after it
ended closes the runs it could not (KILLED, with a tag that says so), and leaves a live one's alone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from histo_exp.errors import UsageError
from histo_exp.locks import lock_file
from histo_exp.signals import check, deferred
from histo_exp.tracking import spool_files, spool_recovery
from histo_exp.tracking.base import ERROR
from histo_exp.tracking.writes import FILES, MAKES, Write, apply, close_orphan, is_offline

log = logging.getLogger(__name__)

FOLDER = "mlflow-unsent"  # in a run's output folder
WRITES, SENT, STORE, OPEN, WRITER = "writes.jsonl", "sent.json", "store.json", "open.json", "writer.lock"
SEND_WAIT_S = 600.0  # another process sending the same spool: uploads of a model take seconds
ORPHAN = ("its process ended without closing it (killed, or its last MLflow write was cut short); "
          "closed by histo_exp.sync")

# MLflow's answers that say the write itself was wrong: keeping it would not help, so they raise.
CLIENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                 "INVALID_STATE", "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED", "NOT_FOUND"}


def unreachable(err: BaseException) -> bool:
    """Whether ``err`` says the store (or its artifact store) could not take a write now: no
    answer, a server error, a locked database, a full disk; not a bad write."""
    if isinstance(err, MlflowException):
        return err.error_code not in CLIENT_ERRORS
    if isinstance(err, OSError):  # requests' errors too; ENOSPC, EDQUOT, EIO, EROFS of a local artifact store
        return not isinstance(err, (FileNotFoundError, IsADirectoryError, NotADirectoryError))  # not a wrong path
    return type(err).__module__.startswith("sqlalchemy")


def reason(err: BaseException) -> str:
    """The first line of an error, cut short: MLflow's connection errors run to hundreds of characters."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


class Spool:
    """The writes kept in ``folder`` for the store at ``tracking_uri``; nothing is on disk until the first."""

    def __init__(self, folder: Path, tracking_uri: str | None = None):
        self.folder = Path(folder)
        self.tracking_uri = tracking_uri
        self._writer: IO | None = None  # writer.lock, held while this process writes here
        self._kept: int | None = None  # how many writes the file holds, once this process appended one
        self._inherited: list[str] = []  # the runs an earlier process writing here left open

    @property
    def base(self) -> Path:
        """The output folder: the files the writes upload are named relative to it."""
        return Path(os.path.abspath(self.folder.parent))

    @classmethod
    def under(cls, root: Path) -> list[Spool]:
        """The spools in ``root``: a run's output folder, a distributed launch's (chief and workers), or one spool."""
        root = Path(root)
        if (root / WRITES).is_file():
            return [cls(root)]
        return [cls(path.parent) for path in sorted(root.rglob(f"{FOLDER}/{WRITES}"))]

    @classmethod
    def waiting(cls, root: Path) -> list[Spool]:
        """The spools in ``root`` with writes not sent yet."""
        return [spool for spool in cls.under(root) if spool.pending()]

    def append(self, write: Write) -> None:
        """Append ``write``; on disk before this returns, or not at all (a full disk leaves no half line)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._kept is None:
            if self.claim():  # an earlier process that wrote here has ended: what it left open stays noted
                spool_recovery.mend(self.folder / WRITES)
                self._inherited = self.left_open()
            self._kept = self._count()
        store = self.folder / STORE
        if not store.exists():
            store.write_text(json.dumps({"tracking_uri": self.tracking_uri}))
        line = (json.dumps(self._portable(write)) + "\n").encode()
        with open(self.folder / WRITES, "ab", buffering=0) as handle:
            size = handle.seek(0, os.SEEK_END)
            try:
                rest = memoryview(line)
                while rest:  # a full disk first writes what fits, then fails
                    written = handle.write(rest)
                    if not written:
                        raise OSError(errno.ENOSPC, "no room to write", handle.name)
                    rest = rest[written:]
                os.fsync(handle.fileno())
            except OSError:
                with contextlib.suppress(OSError):
                    handle.truncate(size)
                raise
        self._kept += 1

    def _count(self) -> int:
        try:
            with open(self.folder / WRITES, "rb") as handle:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
        except FileNotFoundError:
            return 0

    def _portable(self, write: Write) -> Write:
        """``write`` with the file it uploads named so that the folder can move. A file that could not be
        copied (a full disk) keeps its own path: the write is kept all the same."""
        key = FILES.get(write["op"])
        if not key:
            return write
        try:
            return {**write, key: spool_files.keep_file(Path(write[key]), self.folder, self.base)}
        except OSError as err:
            path = os.path.abspath(write[key])
            log.warning("could not copy %s into %s (%s): a sync uploads it from where it is now, if it is "
                        "still there", path, self.folder, reason(err))
            return {**write, key: path}

    def located(self, write: Write) -> Write:
        """``write`` with the file it uploads found where the spool is now (``spool_files.located``)."""
        return spool_files.located(write, self.folder, self.base)

    def claim(self) -> bool:
        """Hold ``writer.lock``: whether no other live process writes here (the OS frees the lock of a
        process that ends, however it ends)."""
        if self._writer is None:
            self._writer = spool_recovery.hold(self.folder / WRITER)  # until ``release``, or the process ends
        return self._writer is not None

    def release(self) -> None:
        """This process writes here no more (a sync may then close the runs it left open)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    @contextlib.contextmanager
    def _alone(self) -> Iterator[bool]:
        """Whether no other live process writes here, for the block."""
        if self._writer is not None:
            yield True
            return
        alone = self.claim()
        try:
            yield alone
        finally:
            if alone:
                self.release()

    def store_uri(self) -> str | None:
        """The store these writes were meant for."""
        try:
            return json.loads((self.folder / STORE).read_text())["tracking_uri"]
        except (OSError, ValueError, KeyError):
            return self.tracking_uri

    def writes(self) -> list[Write]:
        """The kept writes in order; a last line not finished (being written, or cut short by a kill:
        ``spool_recovery.mend`` says so) is not one."""
        try:
            lines = (self.folder / WRITES).read_text().splitlines()
        except FileNotFoundError:
            return []
        writes = []
        for i, line in enumerate(lines):
            try:
                writes.append(json.loads(line))
            except ValueError:
                if i < len(lines) - 1:
                    raise UsageError(f"{self.folder / WRITES} line {i + 1} is not a write: was it edited?") from None
        return writes

    def progress(self) -> dict[str, Any]:
        """``{"sent": how many writes were sent, "ids": offline id -> the store's id}``."""
        try:
            return json.loads((self.folder / SENT).read_text())
        except FileNotFoundError:
            return {"sent": 0, "ids": {}}

    def pending(self) -> int:
        return max(0, len(self.writes()) - int(self.progress()["sent"]))

    def note_open(self, runs: Iterable[str]) -> None:
        """Record the runs the writing process has open now (and those an earlier one left open here), as of
        the writes kept so far."""
        spool_recovery.note_open(self.folder / OPEN, [*runs, *self._inherited], self._kept or 0)

    def left_open(self) -> list[str]:
        """The runs its process had open when it last wrote here: those it noted, opened or closed by the
        writes kept after the note; named as the store names them once their ``create_run`` is sent."""
        ids = self.progress()["ids"]
        noted = spool_recovery.noted_open(self.folder / OPEN)
        return spool_recovery.left_open(noted, self.writes(), ids)

    def missing_in(self, client: MlflowClient) -> list[str]:
        """The experiments and runs the writes not sent yet go to that ``client``'s store does not hold."""
        progress = self.progress()
        ids = progress["ids"]
        pending = self.writes()[int(progress["sent"]):]
        experiments = sorted({w["experiment_id"] for w in pending if "experiment_id" in w})
        runs = {ids.get(r, r) for w in pending for r in spool_recovery.named_runs(w)} | set(self.left_open())
        return ([f"experiment {e}" for e in experiments if not _holds(client.get_experiment, e)]
                + [f"run {r}" for r in sorted(runs) if not is_offline(r) and not _holds(client.get_run, r)])

    def send(self, client: MlflowClient, close_left_open: bool = False) -> int:
        """Send the writes not sent yet, in order, to ``client``'s store; returns how many were sent.

        Stops at the first write the store does not take (it raises), or at a stop (Ctrl-C, SIGTERM),
        with every write before it counted as sent. One process sends a spool at a time. With
        ``close_left_open`` (a sync), the runs its process left open are closed after them, if that
        process has ended.
        """
        with lock_file(self.folder / "send.lock", f"sends the MLflow writes kept in {self.folder}", SEND_WAIT_S), \
                self._alone() as alone:
            if alone:
                spool_recovery.mend(self.folder / WRITES)
                if close_left_open:
                    for run in self.left_open():
                        self.append(close_orphan(run, {ERROR: ORPHAN}))
            elif close_left_open and self.left_open():
                log.warning("the process that keeps MLflow writes in %s still runs: the runs it has open are "
                            "left to it to close", self.folder)
            progress = self.progress()
            writes = self.writes()
            start = int(progress["sent"])
            for i in range(start, len(writes)):
                check()  # a stop whose own raise was lost: between two writes, nothing is half sent
                self._send_one(client, writes[i], i, progress)
            return len(writes) - start

    def _send_one(self, client: MlflowClient, write: Write, i: int, progress: dict[str, Any]) -> None:
        """Send write ``i`` and count it. A stop waits for a write whose repeat would make a second run or
        version; it cuts any other short (an upload may take minutes), and that one is sent again whole."""
        with deferred() if write["op"] in MAKES else contextlib.nullcontext():
            located = self.located(write)
            if write["op"] in FILES:
                log.info("sending %s", located[FILES[write["op"]]])
            made = apply(client, located, progress["ids"])
            with deferred():
                if made and "id" in write:
                    progress["ids"][write["id"]] = made
                progress["sent"] = i + 1
                partial = self.folder / f".{SENT}.{os.getpid()}"
                partial.write_text(json.dumps(progress))
                partial.replace(self.folder / SENT)
        if made and write["op"] == "close_orphan":
            log.warning("run %s was left RUNNING by the process that kept these writes (it ended without "
                        "closing it): marked %s", progress["ids"].get(write["run"], write["run"]), made)


def _holds(get: Any, ref: str) -> bool:
    """Whether the store has ``ref`` (``get`` is the client's ``get_experiment`` or ``get_run``)."""
    try:
        get(ref)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return False
        raise
    return True
