"""A full disk while a run writes its outputs: one line naming the folder, the file and the free space; no
half-written file; the run ends FAILED with that line, keeping the metrics it had logged."""

from __future__ import annotations

import errno
import os

import keras
import pytest
from mlflow import MlflowClient

from histo_exp.errors import one_line_errors
from histo_exp.files import DiskFull, written
from histo_exp.model.saving import load_model, save_model
from histo_exp.tracking import ending_runs

from helpers import tracker


def fills_the_disk_after(limit: int, monkeypatch) -> None:
    """Every file written through Python's io fails with ENOSPC once ``limit`` bytes of it are written,
    as a full disk does: part of it is on disk."""
    real_open = open

    class Full:
        def __init__(self, handle):
            self.handle, self.written = handle, 0

        def write(self, data):
            if self.written + len(data) > limit:
                self.handle.write(data[: max(0, limit - self.written)])
                self.handle.flush()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(data)
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def full_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return Full(handle) if any(m in mode for m in "wa") else handle

    monkeypatch.setattr("builtins.open", full_open)


def test_a_full_disk_while_the_model_is_saved_leaves_no_file_and_says_where(tmp_path, keras_file, monkeypatch):
    model, _ = load_model(keras_file)
    path = tmp_path / "best_model.keras"
    fills_the_disk_after(20_000, monkeypatch)
    with pytest.raises(DiskFull) as full:
        save_model(model, path, {"threshold": 0.5})
    said = str(full.value)
    assert said.startswith(f"no space left on the device writing best_model.keras in {tmp_path} (")
    assert " free): free some space there" in said
    assert list(tmp_path.iterdir()) == []  # no best_model.keras, no partial file a later step would misread


def test_a_file_written_before_stays_whole_when_its_rewrite_finds_the_disk_full(tmp_path, monkeypatch):
    path = tmp_path / "trials.csv"
    path.write_text("trial,score\n0,0.9\n")
    fills_the_disk_after(5, monkeypatch)
    with pytest.raises(DiskFull), written(path) as partial:
        with open(partial, "w") as out:
            out.write("trial,score\n0,0.9\n1,0.8\n")
    assert path.read_text() == "trial,score\n0,0.9\n" and list(tmp_path.iterdir()) == [path]


def test_a_run_that_cannot_write_its_outputs_ends_failed_with_the_reason_and_keeps_its_metrics(
        tmp_path, keras_file, monkeypatch, capsys):
    model, _ = load_model(keras_file)
    t = tracker(tmp_path / "store")
    t.start_search({"seed": 1}, "seed: 1\n", run_name="search")
    with pytest.raises(SystemExit) as ended, one_line_errors(), ending_runs(t):
        t.log_metrics({"test_auc": 0.91})
        fills_the_disk_after(20_000, monkeypatch)
        save_model(model, tmp_path / "best_model.keras", {})
    monkeypatch.undo()
    assert ended.value.code == 1
    said = capsys.readouterr().err.strip().splitlines()[-1]  # the last line: MLflow logs its own above
    assert said.startswith("no space left on the device writing best_model.keras")
    search = MlflowClient(t.tracking_uri).get_run(t.search_run_id)
    assert search.info.status == "FAILED" and search.data.tags["histo_exp.error"] == said
    assert search.data.metrics["test_auc"] == 0.91


def test_a_whole_model_is_the_only_file_left(tmp_path, keras_file):
    model, _ = load_model(keras_file)
    path = save_model(model, tmp_path / "best_model.keras", {"threshold": 0.25})
    assert list(tmp_path.iterdir()) == [path] and load_model(path)[1] == {"threshold": 0.25}
    assert isinstance(load_model(path)[0], keras.Model)
