"""``OfflineWriter`` driven by a fake client: no server, no store, only the spool on disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from histo_exp.tracking import writes
from histo_exp.tracking.offline import OfflineWriter
from histo_exp.tracking.spool import WRITES, Spool


class FakeClient:
    """Takes the writes ``writes.apply`` makes and records them; refuses them all while ``down``,
    as a store that does not answer, and raises ``rejects`` (a bad write) while it is set."""

    def __init__(self):
        self.down = False
        self.rejects: Exception | None = None
        self.calls: list[tuple] = []
        self.made = 0

    def _take(self, *call) -> None:
        if self.down:
            raise ConnectionError("Connection refused")
        if self.rejects is not None:
            raise self.rejects
        self.calls.append(call)

    def create_run(self, experiment_id, start_time, tags, run_name):
        self._take("create_run", run_name, tags.get("mlflow.parentRunId"))
        self.made += 1
        return SimpleNamespace(info=SimpleNamespace(run_id=f"run{self.made}"))

    def log_batch(self, run_id, metrics, params, tags):
        self._take("log_batch", run_id, [(m.key, m.value, m.step) for m in metrics])

    def set_terminated(self, run_id, status, end_time):
        self._take("set_terminated", run_id, status)

    def update_run(self, run_id, status):
        self._take("update_run", run_id, status)


@pytest.fixture
def client() -> FakeClient:
    return FakeClient()


@pytest.fixture
def changes() -> list[bool]:
    return []


@pytest.fixture
def writer(client, changes, tmp_path) -> OfflineWriter:
    return OfflineWriter(client, f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "mlflow-unsent",
                         on_change=changes.append)


def kept(folder: Path) -> list[dict]:
    """The writes in the spool, read from disk."""
    return [json.loads(line) for line in (folder / WRITES).read_text().splitlines()]


def test_a_store_that_answers_takes_every_write_and_nothing_is_kept(writer, client, changes, tmp_path):
    search = writer.write(writes.create_run("0", "search", {}))
    writer.write(writes.log_batch(search, {"auc": 0.5}, step=3))
    assert search == "run1"
    assert client.calls == [("create_run", "search", None), ("log_batch", "run1", [("auc", 0.5, 3)])]
    assert not writer.offline and changes == [] and writer.describe() == ""
    assert not (tmp_path / "mlflow-unsent").exists()


def test_the_first_write_that_fails_takes_it_offline_and_later_ones_go_to_the_spool(writer, client, changes,
                                                                                   tmp_path, caplog):
    search = writer.write(writes.create_run("0", "search", {}))
    client.down = True
    first = writes.log_batch(search, {"auc": 0.6}, step=0)
    writer.write(first)
    assert writer.offline and changes == [True]
    client.down = False  # answers again, but the writer has not asked yet: no write may overtake the kept one
    later = [writes.log_batch(search, {"auc": 0.7}, step=1), writes.set_status(search, "FINISHED")]
    for write in later:
        writer.write(write)
    assert client.calls == [("create_run", "search", None)]
    assert kept(tmp_path / "mlflow-unsent") == [first, *later]
    assert json.loads((tmp_path / "mlflow-unsent" / "store.json").read_text()) == {
        "tracking_uri": writer.tracking_uri}
    assert "3 MLflow write(s) are kept in" in writer.describe()
    assert sum("stopped answering" in r.getMessage() for r in caplog.records) == 1


def test_reconnect_sends_the_kept_writes_in_order_once_and_maps_offline_ids(writer, client, changes,
                                                                            tmp_path):
    client.down = True
    search = writer.write(writes.create_run("0", "search", {}))
    trial = writer.write(writes.create_run("0", "trial-0", {"mlflow.parentRunId": search}))
    writer.write(writes.log_batch(trial, {"val_auc": 0.8}, step=0))
    writer.write(writes.set_status(trial, "FINISHED"))
    assert writes.is_offline(search) and writes.is_offline(trial) and search != trial
    assert writer.reconnect() == {} and writer.offline  # still down: nothing sent
    assert client.calls == [] and writer.spool.pending() == 4

    client.down = False
    assert writer.reconnect() == {search: "run1", trial: "run2"}
    assert client.calls == [("create_run", "search", None), ("create_run", "trial-0", "run1"),
                            ("log_batch", "run2", [("val_auc", 0.8, 0)]),
                            ("set_terminated", "run2", "FINISHED")]
    assert not writer.offline and changes == [True, False]
    assert writer.reconnect() == {} and Spool(tmp_path / "mlflow-unsent").send(client) == 0
    assert len(client.calls) == 4 and writer.spool.pending() == 0 and writer.describe() == ""
    writer.write(writes.log_batch("run1", {"auc": 0.9}))  # online again: straight to the store
    assert client.calls[-1] == ("log_batch", "run1", [("auc", 0.9, 0)])
    assert len(kept(tmp_path / "mlflow-unsent")) == 4


def test_a_write_the_store_rejects_raises_and_is_not_kept(writer, client, changes, tmp_path):
    search = writer.write(writes.create_run("0", "search", {}))
    client.rejects = MlflowException("Invalid value for metric 'auc'", error_code=INVALID_PARAMETER_VALUE)
    with pytest.raises(MlflowException, match="Invalid value"):
        writer.write(writes.log_batch(search, {"auc": 0.5}))
    assert not writer.offline and changes == [] and writer.spool.pending() == 0
    assert not (tmp_path / "mlflow-unsent" / WRITES).exists()


def test_without_a_spool_a_store_that_does_not_answer_raises(client, tmp_path):
    writer = OfflineWriter(client, f"sqlite:///{tmp_path}/mlflow.db")
    client.down = True
    with pytest.raises(ConnectionError):
        writer.write(writes.create_run("0", "search", {}))
    assert not writer.offline and writer.describe() == ""


def test_a_write_the_disk_cannot_take_leaves_no_half_line_and_the_next_one_is_kept_whole(writer, client, tmp_path,
                                                                                        monkeypatch, caplog):
    """A full disk takes what fits of a line, then fails: the line goes, so no later write lands after half a one."""
    import histo_exp.tracking.spool as spool

    client.down = True
    search = writer.write(writes.create_run("0", "search", {}))
    real_fsync = spool.os.fsync

    def full(fd):
        monkeypatch.setattr(spool.os, "fsync", real_fsync)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool.os, "fsync", full)
    writer.write(writes.log_batch(search, {"auc": 0.5}))
    assert "lost" in caplog.text
    writer.write(writes.set_status(search, "FINISHED"))
    assert [w["op"] for w in kept(tmp_path / "mlflow-unsent")] == ["create_run", "set_status"]


def test_a_line_an_earlier_process_left_half_written_is_said_and_cut_before_the_next_write(client, tmp_path, caplog):
    folder = tmp_path / "mlflow-unsent"
    folder.mkdir()
    whole = json.dumps(writes.create_run("0", "search", {}))
    half = json.dumps(writes.log_batch("offline-abc", {"auc": 0.5}))[:45]
    (folder / WRITES).write_text(f"{whole}\n{half}")
    assert len(Spool(folder).writes()) == 1  # the half line is not a write

    writer = OfflineWriter(client, f"sqlite:///{tmp_path}/mlflow.db", folder)  # a later process, same folder
    client.down = True
    writer.write(writes.set_status("offline-abc", "FINISHED"))
    said = [r.getMessage() for r in caplog.records if "cut short" in r.getMessage()]
    assert len(said) == 1 and "a log_batch write of run offline-abc" in said[0]
    assert [w["op"] for w in kept(folder)] == ["create_run", "set_status"]


def test_files_are_kept_by_paths_that_travel_with_the_folder(writer, client, tmp_path):
    """A file in the output folder by its path relative to it; one from outside by a copy in the spool."""
    client.down = True
    inside, outside = tmp_path / "plots" / "roc.png", tmp_path.parent / f"{tmp_path.name}-tuner" / "curves.png"
    for path in (inside, outside):
        path.parent.mkdir()
        path.write_bytes(b"png")
    search = writer.write(writes.create_run("0", "search", {}))
    writer.write(writes.log_artifact(search, inside))
    writer.write(writes.log_artifact(search, outside, "trials"))
    paths = [w["path"] for w in kept(tmp_path / "mlflow-unsent")[1:]]
    assert paths[0] == "plots/roc.png"
    assert paths[1].startswith("mlflow-unsent/files/") and paths[1].endswith("/curves.png")
    assert (tmp_path / paths[1]).read_bytes() == b"png"
    shutil.rmtree(outside.parent)
    located = Spool(tmp_path / "mlflow-unsent").located(kept(tmp_path / "mlflow-unsent")[2])
    assert located["path"] == str(tmp_path / paths[1]) and located["artifact_path"] == "trials"
