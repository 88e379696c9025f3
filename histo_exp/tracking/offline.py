"""Writes to a store that may go away: carried out at once while it answers, kept in a ``Spool`` while it
does not, and sent once it is back, by the writer itself (``reconnect``), by a resumed search
(``send_unsent``) or by ``python -m histo_exp.sync`` (``sync``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

import histo_exp.tracking.writes as writes
from histo_exp.errors import EnvironmentFault, PathNotFound, Unreachable, UsageError
from histo_exp.tracking.connection import check_server, http_settings
from histo_exp.tracking.spool import Spool, reason, unreachable
from histo_exp.tracking.store import local_store

log = logging.getLogger(__name__)


class OfflineWriter:
    """Carries writes out on ``client`` (anything with the ``MlflowClient`` methods ``writes.apply``
    calls); with an ``unsent_dir``, keeps the writes the store cannot take there instead of failing.

    ``on_change(offline)`` hears when the store stops answering and when it answers again.
    """

    def __init__(self, client: Any, tracking_uri: str, unsent_dir: Path | str | None = None,
                 on_change: Callable[[bool], None] = lambda offline: None):
        self.client = client
        self.tracking_uri = tracking_uri
        self.spool = Spool(Path(unsent_dir), tracking_uri) if unsent_dir else None
        self.offline = False  # the store stopped answering: every write goes to the spool until it is back
        self.on_change = on_change
        self._said: set[str] = set()
        self._open: set[str] = set()  # the runs this process opened (or reopened) and has not ended
        self._kept = self._noted = False  # whether this process kept a write, and noted its open runs since

    def write(self, write: writes.Write) -> str | None:
        """Carry ``write`` out on the store, or keep it when the store cannot take it (or it names a
        run made while the store was away); returns the id a new run or model got (an offline id if kept)."""
        made = self._write(write)
        if self._track(write, made) or (self._kept and not self._noted):
            self._note_open()
        return made

    def _write(self, write: writes.Write) -> str | None:
        if self.spool is None:
            return writes.apply(self.client, write)
        if not self.offline and not writes.refers_offline(write):
            try:
                return writes.apply(self.client, write)
            except Exception as err:
                if not unreachable(err):
                    raise
                self._lost(write, err)
        try:
            self.spool.append(write)
            self._kept = True
        except OSError as err:
            log.error("MLflow write %s lost: the store did not take it and %s could not keep it (%s)",
                      write["op"], self.spool.folder, err)
        return write.get("id")

    def _track(self, write: writes.Write, made: str | None) -> bool:
        """Follow the runs this process has open; whether that changed."""
        before = set(self._open)
        if write["op"] == "create_run" and made:
            self._open.add(made)
        elif write["op"] == "set_status":
            (self._open.add if write["end_time"] is None else self._open.discard)(write["run"])
        return self._open != before

    def _note_open(self) -> None:
        """Once writes are kept, note the runs open with them: a sync after a kill closes those (``Spool.left_open``)."""
        if not self._kept:
            return
        try:
            self.spool.note_open(self._open)
            self._noted = True
        except OSError as err:  # a full disk: the sync then goes by the kept writes alone
            log.debug("could not note the open runs in %s: %s", self.spool.folder, err)

    def _lost(self, write: writes.Write, err: BaseException) -> None:
        """Say once what happened and where the writes go; a failed artifact upload (a full disk, say)
        keeps that file back, a failed metadata write takes the writer offline until the store answers."""
        artifact = write["op"] in writes.ARTIFACTS
        if not artifact:
            self.offline = True
            self.on_change(True)
        kind = "artifact" if artifact else "store"
        if kind not in self._said:
            self._said.add(kind)
            what = (f"could not store an artifact of run {write.get('run')} ({reason(err)})" if artifact else
                    f"the MLflow store {self.tracking_uri} stopped answering ({reason(err)})")
            log.warning("%s: training goes on, and what was not sent is kept in %s; it is sent when the store "
                        "answers again (at the next trial, on resume, or by `python -m histo_exp.sync folder=%s`)",
                        what, self.spool.folder, self.spool.folder.parent)

    def reconnect(self) -> dict[str, str]:
        """While offline, ask the store whether it is back (seconds); if so, send what was kept and go
        on online. Returns the offline ids mapped to the ones the store gave (empty while it is away)."""
        if not (self.offline and self.spool):
            return {}
        try:
            check_server(self.tracking_uri, timeout_s=2.0)
            sent = self.spool.send(self.client)
        except Exception as err:
            if not unreachable(err):
                raise
            return {}
        self.offline = False
        self._said.discard("store")
        self.on_change(False)
        log.warning("the MLflow store %s answers again: sent the %d write(s) kept while it was away",
                    self.tracking_uri, sent)
        ids = self.spool.progress()["ids"]
        self._open = {ids.get(run, run) for run in self._open}
        self._note_open()
        return ids

    def send_unsent(self, folders: Iterable[Path]) -> None:
        """Send what earlier processes kept for this store in ``folders`` (their output folders)."""
        for folder in folders:
            for spool in Spool.waiting(folder):
                if spool.store_uri() != self.tracking_uri:
                    continue
                try:
                    sent = spool.send(self.client)
                except Exception as err:
                    if not unreachable(err):
                        raise
                    log.warning("could not send the MLflow writes kept in %s (%s); `python -m histo_exp.sync "
                                "folder=%s` sends them later", spool.folder, reason(err), spool.folder)
                    continue
                log.info("sent %d MLflow write(s) kept by an earlier run in %s", sent, spool.folder)

    def describe(self) -> str:
        """What is kept and not in the store yet, and how to send it; empty when nothing is."""
        pending = self.spool.pending() if self.spool else 0
        if not pending:
            return ""
        return (f"{pending} MLflow write(s) are kept in {self.spool.folder}, not in the store yet: "
                f"`python -m histo_exp.sync folder={self.spool.folder.parent}` sends them once it is back")


def sync(folder: Path, tracking_uri: str | None = None, http_timeout_s: float = 20, http_retries: int = 2) -> int:
    """Send every spool under ``folder`` to its store (or to ``tracking_uri``), then close the runs their
    processes left open (if they have ended); how many writes were sent. A store that does not answer
    for ``http_timeout_s`` (``http_retries`` more times) stops it: the same command goes on later."""
    if not folder.is_dir():
        raise PathNotFound(f"folder={folder} is not a folder: pass the output folder of the run "
                           "that kept MLflow writes (it named it when it ended)")
    spools = [spool for spool in Spool.under(folder) if spool.pending() or spool.left_open()]
    if not spools:
        print(f"nothing to send: no MLflow writes are waiting under {folder}")
        return 0
    http_settings(http_timeout_s, http_retries)
    return sum(_sync(spool, tracking_uri) for spool in spools)


def _sync(spool: Spool, tracking_uri: str | None) -> int:
    uri = tracking_uri or spool.store_uri()
    if not uri:
        raise UsageError(f"{spool.folder} does not say which store its writes are for: pass tracking_uri=...")
    pending = spool.pending()
    try:
        sent = spool.send(_store_for(spool, uri, passed=bool(tracking_uri)), close_left_open=True)
    except KeyboardInterrupt:
        log.warning("stopped after sending %d of the %d MLflow write(s) kept in %s: the same command sends the "
                    "rest", pending - spool.pending(), pending, spool.folder)
        raise
    except Exception as err:
        if not unreachable(err):
            raise
        done = pending - spool.pending()
        raise Unreachable(f"{uri} stopped taking writes after {done} of {pending} from {spool.folder} "
                          f"({reason(err)}): run the same command again once it "
                          "answers; it goes on from there") from None
    print(f"sent {sent} MLflow write(s) from {spool.folder} to {uri}")
    return sent


def _store_for(spool: Spool, uri: str, passed: bool) -> MlflowClient:
    """A client of ``uri``, once it is known to hold what the kept writes go to; a store that is not
    there is not made (MLflow would make an empty one)."""
    check_server(uri)
    path = local_store(uri)
    if path is not None and not path.exists():
        raise _wrong_store(spool, uri, passed, f"is not there (no {path})")
    client = MlflowClient(tracking_uri=uri)
    missing = spool.missing_in(client)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise _wrong_store(spool, uri, passed, f"does not hold {missing[0]}{more}, which they go to")
    return client


def _wrong_store(spool: Spool, uri: str, passed: bool, what: str) -> Exception:
    """The user's ``tracking_uri`` names the wrong store (a usage error); or the store the writes were made for
    is gone or emptied (a fault of the machine): nothing sent, nothing made, what to pass instead."""
    made_for = spool.store_uri()
    if passed and uri != made_for:
        return UsageError(
            f"tracking_uri={uri} {what}: the MLflow writes kept in {spool.folder} were made for "
            f"{made_for or 'a store they do not name'}; drop tracking_uri= to send them there, or pass "
            "tracking_uri=<the store that holds their runs now>. Nothing was sent")
    return EnvironmentFault(
        f"the MLflow store {uri} that the writes kept in {spool.folder} were made for {what}: if it moved, "
        "pass tracking_uri=<where it is now>. Nothing was sent")
