"""``histo_exp.tracking.sync`` (``python -m histo_exp.sync``) on real SQLite stores, with each fault injected
in-process: a search logs while its store is away (its client points at a port nobody listens on), then
its output folder is moved or copied, the store is the wrong one, the last kept write is cut short, or a
stop comes in the middle of the sync."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import socket
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import histo_exp.tracking.offline as offline
from histo_exp import signals
from histo_exp.errors import EnvironmentFault, UsageError, one_line_errors
from histo_exp.tracking import MlflowTracker, sync, writes
from histo_exp.tracking.base import ERROR
from histo_exp.tracking.connection import http_settings
from histo_exp.tracking.spool import FOLDER, SENT, WRITES, Spool

from helpers import tracker

EPOCHS = 3


@pytest.fixture
def no_stop():
    """Forget the stop a test leaves pending."""
    signals.reset()
    yield
    signals.reset()


def away(t: MlflowTracker) -> None:
    """The store stops answering: the tracker's writes go to a port bound here and never listened on (held
    for the test's length, so no server started meanwhile can take it)."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    t.writer.client = MlflowClient(f"http://127.0.0.1:{closed.getsockname()[1]}")
    t.writer.closed_port = closed


def offline_search(tmp_path: Path, store_away_from: str = "start", ended: bool = True) -> MlflowTracker:
    """A search whose store goes away at its ``start`` (every run made offline) or ``late`` (after the search
    run was made); its trial's curves are drawn in a tuner folder outside the output folder, as a search's
    are. ``ended=False``: its process is killed before it ends the search. Then the process is gone."""
    t = tracker(tmp_path / "store", unsent_dir=str(tmp_path / "out" / FOLDER))
    http_settings(5, retries=0)  # a refused connection fails at once, not after the tracker's retries
    if store_away_from == "late":
        t.start_search({"seed": 1}, "seed: 1\n", run_name="search")
    away(t)
    if store_away_from == "start":
        t.start_search({"seed": 1}, "seed: 1\n", run_name="search")
    t.start_trial("0", {"lr": 0.01})
    for epoch in range(EPOCHS):
        t.log_epoch(epoch, {"val_auc": 0.5 + epoch / 10})
    curves = tmp_path / "tuner" / "trial_0" / "training_curves.png"
    curves.parent.mkdir(parents=True)
    curves.write_bytes(b"the trial's curves")
    t.log_trial_artifact(curves)
    t.end_trial("FINISHED", {"val_auc": 0.7})
    (tmp_path / "out" / "trials.csv").write_text("trial,val_auc\n0,0.7\n")
    t.log_artifact(tmp_path / "out" / "trials.csv")
    if ended:
        t.end_search("FINISHED")
    assert t.offline and t.unsent.pending() > 0
    t.unsent.release()  # the process ends: the OS frees its lock
    return t


def store_of(tmp_path: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path}/store/mlflow.db")


def runs(client: MlflowClient) -> dict[str, object]:
    """The runs of the experiment by name (each name must be there once)."""
    found = client.search_runs(["1"])
    assert Counter(r.info.run_name for r in found) == {"search": 1, "trial-0": 1}
    return {r.info.run_name: r for r in found}


def artifact(client: MlflowClient, run: object, name: str, dst: Path) -> bytes:
    return Path(client.download_artifacts(run.info.run_id, name, str(dst))).read_bytes()


def test_a_moved_output_folder_syncs_from_where_it_is_with_the_files_it_kept_from_outside(tmp_path, capsys):
    offline_search(tmp_path)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(tmp_path / "out", moved)
    shutil.rmtree(tmp_path / "tuner")  # the trial's curves are only in the spool now

    pending = Spool(moved / FOLDER).pending()
    assert sync(moved) == pending
    found = runs(client := store_of(tmp_path))
    assert {name: r.info.status for name, r in found.items()} == {"search": "FINISHED", "trial-0": "FINISHED"}
    history = client.get_metric_history(found["trial-0"].info.run_id, "val_auc")
    assert [m.step for m in history] == [0, 1, 2, 3]  # each epoch once, and the final score
    assert artifact(client, found["trial-0"], "training_curves.png", tmp_path / "d1") == b"the trial's curves"
    assert artifact(client, found["search"], "trials.csv", tmp_path / "d2") == b"trial,val_auc\n0,0.7\n"
    assert sync(moved) == 0 and "nothing to send" in capsys.readouterr().out


def test_a_copied_output_folder_uploads_its_own_files_not_the_ones_left_at_the_old_place(tmp_path):
    offline_search(tmp_path)
    shutil.copytree(tmp_path / "out", tmp_path / "copy")
    (tmp_path / "out" / "trials.csv").write_text("changed at the old place\n")
    (tmp_path / "tuner" / "trial_0" / "training_curves.png").write_bytes(b"changed at the old place")

    sync(tmp_path / "copy")
    found = runs(client := store_of(tmp_path))
    assert artifact(client, found["trial-0"], "training_curves.png", tmp_path / "d1") == b"the trial's curves"
    assert artifact(client, found["search"], "trials.csv", tmp_path / "d2") == b"trial,val_auc\n0,0.7\n"


def test_a_spool_kept_with_absolute_paths_still_syncs_where_it_was_made(tmp_path):
    """Spools written before paths were relative name every file by its absolute path."""
    t = tracker(tmp_path / "store")
    made = tmp_path / "out" / "curves.png"
    made.parent.mkdir()
    made.write_bytes(b"png")
    search = writes.create_run(t.experiment_id, "search", {})
    kept = [search, writes.log_artifact(search["id"], made), writes.set_status(search["id"], "FINISHED")]
    (tmp_path / "out" / FOLDER).mkdir()
    (tmp_path / "out" / FOLDER / WRITES).write_text("".join(json.dumps(w) + "\n" for w in kept))
    (tmp_path / "out" / FOLDER / "store.json").write_text(json.dumps({"tracking_uri": t.tracking_uri}))
    assert json.loads((tmp_path / "out" / FOLDER / WRITES).read_text().splitlines()[1])["path"] == str(made)

    assert sync(tmp_path / "out") == 3
    (run,) = t.client.search_runs([t.experiment_id])
    assert run.info.status == "FINISHED" and [a.path for a in t.client.list_artifacts(run.info.run_id)] == ["curves.png"]


def say(tmp_path: Path, capsys, **kwargs) -> tuple[int, str]:
    """The exit code and the stderr of a sync of ``out`` said as the command says it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as ended, one_line_errors():
        sync(tmp_path / "out", **kwargs)
    return ended.value.code, capsys.readouterr().err


def test_a_tracking_uri_that_is_not_there_is_one_line_and_makes_no_store(tmp_path, capsys):
    offline_search(tmp_path)
    wrong = tmp_path / "nowhere" / "mlflow.db"
    code, said = say(tmp_path, capsys, tracking_uri=f"sqlite:///{wrong}")
    assert code == UsageError.exit_code and said.count("\n") == 1
    assert f"were made for sqlite:///{tmp_path}/store/mlflow.db" in said and "drop tracking_uri=" in said
    assert not wrong.parent.exists()
    assert Spool(tmp_path / "out" / FOLDER).progress()["sent"] == 0


def test_a_store_without_the_runs_is_one_line_and_is_left_as_it_was(tmp_path, capsys):
    """The search run was made in its own store before that went away; another store lacks it."""
    offline_search(tmp_path, store_away_from="late")
    other = tracker(tmp_path / "other")  # a store with an experiment 1, and no runs
    code, said = say(tmp_path, capsys, tracking_uri=other.tracking_uri)
    assert code == UsageError.exit_code and said.count("\n") == 1
    assert "does not hold run" in said and f"made for sqlite:///{tmp_path}/store/mlflow.db" in said
    assert other.client.search_runs([other.experiment_id]) == []
    assert Spool(tmp_path / "out" / FOLDER).progress()["sent"] == 0


def test_a_store_the_writes_were_made_for_that_is_gone_is_one_line_and_is_not_made_again(tmp_path, capsys):
    offline_search(tmp_path)
    shutil.move(tmp_path / "store", tmp_path / "moved-store")
    code, said = say(tmp_path, capsys)
    assert code == EnvironmentFault.exit_code and said.count("\n") == 1
    assert f"sqlite:///{tmp_path}/store/mlflow.db that the writes kept in" in said and "tracking_uri=" in said
    assert not (tmp_path / "store").exists()

    assert sync(tmp_path / "out", f"sqlite:///{tmp_path}/moved-store/mlflow.db") > 0  # where it is now
    (search,) = MlflowClient(f"sqlite:///{tmp_path}/moved-store/mlflow.db").search_runs(
        ["1"], "tags.`histo_exp.role` = 'search'")
    assert search.info.status == "FINISHED"


def test_a_torn_last_write_is_said_and_skipped_and_the_search_run_is_closed(tmp_path, caplog):
    """Killed while it kept the search run's last status: half a line is all there is of it."""
    t = offline_search(tmp_path, store_away_from="late", ended=False)
    line = json.dumps(writes.set_status(t.search_run_id, "FINISHED"))
    with open(tmp_path / "out" / FOLDER / WRITES, "a") as handle:
        handle.write(line[:40])
    with caplog.at_level(logging.WARNING, logger="histo_exp.tracking"):
        sync(tmp_path / "out")
    said = [r.getMessage() for r in caplog.records if "cut short" in r.getMessage()]
    assert len(said) == 1 and "a set_status write of run" in said[0] and "skipped" in said[0], caplog.text
    found = runs(store_of(tmp_path))
    assert found["trial-0"].info.status == "FINISHED"
    assert found["search"].info.status == "KILLED" and "ended without closing it" in found["search"].data.tags[ERROR]
    assert (tmp_path / "out" / FOLDER / WRITES).read_text().endswith("\n")
    assert sync(tmp_path / "out") == 0


def test_runs_are_left_to_a_process_that_still_writes_and_closed_once_it_has_ended(tmp_path, caplog):
    t = offline_search(tmp_path, ended=False)  # every run made offline, the search never ended
    assert t.unsent.claim()  # as if its process were still running
    with caplog.at_level(logging.WARNING, logger="histo_exp.tracking"):
        sync(tmp_path / "out")
    assert "still runs" in caplog.text
    assert runs(store_of(tmp_path))["search"].info.status == "RUNNING"

    t.unsent.release()  # now it has ended
    assert sync(tmp_path / "out") == 1  # the one write that closes it
    found = runs(store_of(tmp_path))
    assert {name: r.info.status for name, r in found.items()} == {"search": "KILLED", "trial-0": "FINISHED"}
    assert sync(tmp_path / "out") == 0


class StopsMidway(MlflowClient):
    """A real client of the store that gets a stop (SIGTERM) as it takes the ``at``-th ``op``: ``pending``,
    recorded before the write as a handler whose raise was lost leaves it; or from the ``handler`` itself,
    once the store has taken the write and before the sync has counted it."""

    at, op, how, calls = 2, "log_batch", "pending", 0

    def _take(self, op: str, write):
        StopsMidway.calls += op == StopsMidway.op
        stop = StopsMidway.calls == StopsMidway.at and op == StopsMidway.op
        if stop and StopsMidway.how == "pending":
            signals._state.received.append(signal.SIGTERM)
        made = write()
        if stop and StopsMidway.how == "handler":
            signals._stop(signal.SIGTERM, None)  # raises Stopped here, unless the write is one a stop waits for
        return made

    def log_batch(self, *args, **kwargs):
        return self._take("log_batch", lambda: super(StopsMidway, self).log_batch(*args, **kwargs))

    def create_run(self, *args, **kwargs):
        return self._take("create_run", lambda: super(StopsMidway, self).create_run(*args, **kwargs))


@pytest.mark.parametrize("op, how", [("log_batch", "pending"), ("log_batch", "handler"), ("create_run", "handler")])
def test_a_stop_in_the_middle_of_a_sync_raises_and_the_next_sync_sends_the_rest_once(tmp_path, monkeypatch,
                                                                                       no_stop, op, how):
    """A stop between writes, or in one the store keeps once however often it is sent, ends the sync at
    once; one in a write that would make a second run waits until that write is counted."""
    offline_search(tmp_path)
    spool = Spool(tmp_path / "out" / FOLDER)
    pending = spool.pending()
    for name, value in (("op", op), ("how", how), ("calls", 0), ("at", 2)):
        monkeypatch.setattr(StopsMidway, name, value)
    monkeypatch.setattr(offline, "MlflowClient", StopsMidway)
    with pytest.raises(signals.Stopped):
        sync(tmp_path / "out")
    sent = json.loads((spool.folder / SENT).read_text())["sent"]
    assert 0 < sent < pending

    signals.reset()
    monkeypatch.setattr(StopsMidway, "calls", -100)
    assert sync(tmp_path / "out") == pending - sent
    found = runs(client := store_of(tmp_path))  # each run once
    assert {name: r.info.status for name, r in found.items()} == {"search": "FINISHED", "trial-0": "FINISHED"}
    history = client.get_metric_history(found["trial-0"].info.run_id, "val_auc")
    assert [m.step for m in history] == [0, 1, 2, 3]
    assert found["trial-0"].data.params == {"lr": "0.01"}


def test_what_a_killed_process_left_open_is_closed_when_a_later_one_kept_writes_in_the_same_folder(tmp_path):
    """A search rerun with the same output folder while the store is still away: the first launch's runs,
    which only its kept writes name, still end KILLED; the second launch's end as it ended them."""
    offline_search(tmp_path, ended=False)
    t = tracker(tmp_path / "store", unsent_dir=str(tmp_path / "out" / FOLDER))
    away(t)
    t.start_search({"seed": 1}, "seed: 1\n", run_name="again")
    t.end_search("FINISHED")
    t.unsent.release()

    sync(tmp_path / "out")
    found = {r.info.run_name: r.info.status for r in store_of(tmp_path).search_runs(["1"])}
    assert found == {"search": "KILLED", "trial-0": "FINISHED", "again": "FINISHED"}
