"""Writes the MLflow store could not take, kept in the run's output folder until it is back.

The idea of offline trackers (``wandb sync``, ``neptune sync``): training goes on, what was not
sent is kept on disk, and a sync sends it later. MLflow's own async logging only queues in memory,
so a crash would lose it. A JSON line per write in ``writes.jsonl``, in the order the writes were
made, each flushed to disk as it is kept (a kill loses none); ``sent.json`` counts the ones sent and
maps the offline ids to the ones the store gave, so a sync that stops half-way (the store went away
again) goes on where it stopped and sends nothing twice.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from histo_exp.errors import UsageError
from histo_exp.locks import lock_file
from histo_exp.tracking.writes import Write, apply

log = logging.getLogger(__name__)

FOLDER = "mlflow-unsent"  # in a run's output folder
WRITES, SENT, STORE = "writes.jsonl", "sent.json", "store.json"
SEND_WAIT_S = 600.0  # another process sending the same spool: uploads of a model take seconds

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

    @classmethod
    def waiting(cls, root: Path) -> list[Spool]:
        """The spools in ``root`` with writes not sent yet: a run's output folder, a distributed
        launch's (chief and workers), or one spool."""
        root = Path(root)
        found = [cls(root)] if (root / WRITES).is_file() else [
            cls(path.parent) for path in sorted(root.rglob(f"{FOLDER}/{WRITES}"))]
        return [spool for spool in found if spool.pending()]

    def append(self, write: Write) -> None:
        """Append ``write``; on disk before this returns."""
        self.folder.mkdir(parents=True, exist_ok=True)
        store = self.folder / STORE
        if not store.exists():
            store.write_text(json.dumps({"tracking_uri": self.tracking_uri}))
        with open(self.folder / WRITES, "a") as handle:
            handle.write(json.dumps(write) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def store_uri(self) -> str | None:
        """The store these writes were meant for."""
        try:
            return json.loads((self.folder / STORE).read_text())["tracking_uri"]
        except (OSError, ValueError, KeyError):
            return self.tracking_uri

    def writes(self) -> list[Write]:
        """The kept writes in order; a last line cut short by a kill is not one."""
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

    def send(self, client: MlflowClient) -> int:
        """Send the writes not sent yet, in order, to ``client``'s store; returns how many were sent.

        Stops at the first write the store does not take (it raises), with every write before it
        counted as sent. One process sends a spool at a time.
        """
        with lock_file(self.folder / "send.lock", f"sends the MLflow writes kept in {self.folder}", SEND_WAIT_S):
            progress = self.progress()
            writes = self.writes()
            start = int(progress["sent"])
            for i in range(start, len(writes)):
                write = writes[i]
                if write["op"] in ("log_artifact", "log_model"):
                    log.info("sending %s", write.get("path") or write.get("keras_path"))
                made = apply(client, write, progress["ids"])
                if made and "id" in write:
                    progress["ids"][write["id"]] = made
                progress["sent"] = i + 1
                partial = self.folder / f".{SENT}.{os.getpid()}"
                partial.write_text(json.dumps(progress))
                partial.replace(self.folder / SENT)
            return len(writes) - start
