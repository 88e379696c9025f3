"""Prediction in this process: one file, a folder, a patient tree, bad files, the model's own metadata;
its outputs inside its input, a stop during the maps, a full disk."""

import csv
import errno
import os
import shutil
import signal
from pathlib import Path

import keras_tuner as kt
import matplotlib.figure
import numpy as np
import pytest

from histo_exp import signals
from histo_exp.data.decode import decode
from histo_exp.data.index import index, index_files
from histo_exp.evaluation.maps import patient_maps
from histo_exp.files import DiskFull
from histo_exp.model.saving import load_model, read_meta, save_model

from helpers import hypermodel
from helpers import predict as main


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_root):
    """An untrained model saved with metadata whose threshold (the median of its own predictions on
    the tiny set) splits the patches, and is not 0.5: labels show which threshold was applied."""
    hm = hypermodel({"blocks": 1, "filters": 8, "dense_units": [8, 8, 8]}, {}, (32, 32, 1))
    model = hm.build(kt.HyperParameters())
    images = decode(index(tiny_root), 32, "gray", progress=False).images
    prob = model.predict(images, verbose=0)[:, 1]
    threshold = float(np.median(prob))
    assert ((prob >= threshold) != (prob >= 0.5)).any()  # the fixture is useful only if it differs
    meta = {"image_size": 32, "color": "gray", "threshold": threshold}
    path = save_model(model, tmp_path_factory.mktemp("model") / "best_model.keras", meta)
    return path, meta, images, prob


@pytest.fixture(scope="module")
def model_path(saved):
    return saved[0]


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_the_model_file_carries_what_prediction_needs(saved, tmp_path):
    """Metadata and weights both survive the round trip through the one .keras file."""
    path, meta, images, prob = saved
    model, loaded_meta = load_model(path)
    assert loaded_meta == read_meta(path) == meta
    assert model.input_shape == (None, 32, 32, 1)
    assert np.allclose(model.predict(images, verbose=0)[:, 1], prob, atol=1e-6)  # the same weights
    model.save(tmp_path / "plain.keras")  # a .keras file from elsewhere: no metadata, not an error
    assert read_meta(tmp_path / "plain.keras") == {}


def test_a_patient_tree_gives_rows_and_maps(saved, tiny_root, tmp_path):
    model_path, meta, _, prob = saved
    out = main([f"model={model_path}", f"input={tiny_root}", f"output={tmp_path}/p.csv"])
    table = rows(out)
    assert len(table) == 240
    first = table[0]
    assert first["patient"] == "90001" and first["x"] and first["error"] == ""
    manifest = index(tiny_root)
    assert [r["path"] for r in table] == [str(manifest.root / p) for p in manifest.paths]
    assert np.allclose([float(r["prob_idc"]) for r in table], prob, atol=1e-5)
    # Labels at the model's own threshold (the fixture made sure 0.5 would give other labels).
    assert [r["label"] for r in table] == [str(int(p >= meta["threshold"])) for p in
                                          (float(r["prob_idc"]) for r in table)]
    assert {r["label"] for r in table} == {"0", "1"}
    assert sorted(p.name for p in (tmp_path / "p_maps").iterdir()) == [f"{90001 + i}.png" for i in range(6)]


def test_linked_patient_folders_are_predicted_like_real_ones(model_path, tiny_root, tmp_path):
    """A tree of links to patient folders (how one picks patients without copying them) is a tree;
    a model file needs no tracking store (logger=none)."""
    linked = tmp_path / "picked"
    linked.mkdir()
    for patient in ("90001", "90004"):
        (linked / patient).symlink_to(tiny_root / patient, target_is_directory=True)
    table = rows(main([f"model={model_path}", f"input={linked}", f"output={tmp_path}/p.csv", "logger=none"]))
    assert len(table) == 80 and {r["patient"] for r in table} == {"90001", "90004"}
    assert all(r["error"] == "" for r in table)


def test_one_file_and_bad_files_get_rows_not_crashes(model_path, tiny_root, tmp_path):
    one = next((tiny_root / "90001" / "1").iterdir())
    assert len(rows(main([f"model={model_path}", f"input={one}", f"output={tmp_path}/one.csv"]))) == 1
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(one, folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG but not really")
    (folder / "notes.txt").write_text("ignored")
    table = {r["path"].rsplit("/", 1)[1]: r for r in rows(main(
        [f"model={model_path}", f"input={folder}", f"output={tmp_path}/m.csv"]))}
    assert set(table) == {"good.png", "broken.png"}
    assert table["broken.png"]["error"] == "unreadable" and table["broken.png"]["prob_idc"] == ""
    assert table["good.png"]["error"] == "" and 0 <= float(table["good.png"]["prob_idc"]) <= 1
    assert table["good.png"]["patient"] == ""  # not an IDC-layout name: no patient, no map
    assert not (tmp_path / "m_maps").exists()


def leftovers(folder: Path) -> list[str]:
    """Temporary files (``files.written``) anywhere under ``folder``."""
    return [str(p) for p in folder.rglob("*.partial-*")]


def test_outputs_inside_the_input_are_not_read_back(model_path, tiny_root, tmp_path):
    """output=<input>/predictions.csv, run twice: the second run reads neither the CSV nor the maps,
    nor a map reached through a linked folder, nor a temporary file a killed run left."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for patient in ("90001", "90002"):
        (tree / patient).symlink_to(tiny_root / patient, target_is_directory=True)
    args = [f"model={model_path}", f"input={tree}", f"output={tree}/predictions.csv"]
    first = rows(main(args))
    assert sorted(p.name for p in (tree / "predictions_maps").iterdir()) == ["90001.png", "90002.png"]
    (tree / "maps_again").symlink_to(tree / "predictions_maps", target_is_directory=True)
    shutil.copy(tree / "predictions_maps" / "90001.png", tree / ".90001.partial-4242.png")
    assert rows(main(args)) == first  # 80 rows, none for the command's own files
    assert len(first) == 80 and all(r["patient"] for r in first)


def test_a_stop_during_the_maps_keeps_the_whole_csv_and_no_empty_folder(model_path, tiny_root, tmp_path,
                                                                        monkeypatch):
    """A stop in the middle of writing the first map: every prediction is in the CSV, no maps folder,
    no half-written PNG."""
    def stopped_mid_write(fig, path, *args, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise signals.Stopped(signal.SIGINT)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", stopped_mid_write)
    with pytest.raises(KeyboardInterrupt):
        main([f"model={model_path}", f"input={tiny_root}", f"output={tmp_path}/p.csv"])
    assert len(rows(tmp_path / "p.csv")) == 240 and all(r["prob_idc"] for r in rows(tmp_path / "p.csv"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]


def test_a_stop_whose_raise_was_lost_ends_the_maps_at_the_next_one(tiny_root, tmp_path, monkeypatch):
    """The handler's own raise can be lost (histo_exp.signals): the stop is acted on before the next
    map; the map drawn stays, whole."""
    import histo_exp.evaluation.maps as maps

    m = index(tiny_root)
    draw = maps.plot_patient_map

    def then_stopped(*args, **kwargs):
        signals._state.received.append(signal.SIGTERM)  # received, its raise lost
        return draw(*args, **kwargs)

    monkeypatch.setattr(maps, "plot_patient_map", then_stopped)
    try:
        with pytest.raises(signals.Stopped):
            patient_maps(m.patients, m.x, m.y, m.labels, np.full(len(m), 0.5), 0.5, tmp_path / "maps")
    finally:
        signals.reset()
    assert [p.name for p in (tmp_path / "maps").iterdir()] == ["90001.png"]


class FullDisk:
    """A file that takes ``room`` characters, then fails as a full disk does (ENOSPC), half written."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, text):
        if len(text) > self.room:
            self.f.write(text[:self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(text)
        return self.f.write(text)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_a_full_disk_leaves_the_old_csv_and_no_partial_file(model_path, tiny_root, tmp_path, monkeypatch):
    """ENOSPC in the middle of the CSV: one line naming the folder, the file and the free space; the
    CSV of the run before is kept as it was, no half file is left, and no map is drawn."""
    (tmp_path / "p.csv").write_text("the run before\n")
    real_open = Path.open

    def open_(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return FullDisk(f, 500) if "w" in mode and path.suffix == ".csv" else f

    monkeypatch.setattr(Path, "open", open_)
    with pytest.raises(DiskFull) as err:
        main([f"model={model_path}", f"input={tiny_root}", f"output={tmp_path}/p.csv"])
    message = str(err.value)
    assert "\n" not in message and f"writing p.csv in {tmp_path} (" in message and " free)" in message
    assert (tmp_path / "p.csv").read_text() == "the run before\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]


def test_a_stop_while_the_csv_is_written_waits_for_it(tiny_root, tmp_path, monkeypatch):
    """SIGTERM after the first row: the handler (called as Python calls it) holds the stop back until the
    CSV is whole, then raises it; the predictions are not lost to a stop one second late."""
    from histo_exp.predict import write_csv

    m = index(tiny_root)
    real_open = Path.open

    def open_(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "w" not in mode:
            return f
        write = f.write

        def write_then_stop(text):
            if not signals._state.received:
                signals._stop(signal.SIGTERM, None)
            return write(text)

        f.write = write_then_stop
        return f

    monkeypatch.setattr(Path, "open", open_)
    try:
        with pytest.raises(signals.Stopped):
            write_csv(tmp_path / "p.csv", m, np.full(len(m), 0.5), np.ones(len(m), bool), {}, 0.5)
    finally:
        signals.reset()
    assert len(rows(tmp_path / "p.csv")) == 240 and sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]


def test_a_full_disk_while_drawing_leaves_no_half_map_and_no_empty_folder(tiny_root, tmp_path, monkeypatch):
    m = index(tiny_root)

    def full(fig, path, *args, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    with pytest.raises(DiskFull, match=f"writing 90001.png in {tmp_path / 'maps'} "):
        patient_maps(m.patients, m.x, m.y, m.labels, np.full(len(m), 0.5), 0.5, tmp_path / "maps")
    assert list(tmp_path.iterdir()) == []


def test_the_walk_lists_each_file_once_whatever_links_the_tree_holds(tiny_root, tmp_path):
    """A link loop, a linked folder pointing inside the tree and a link to a file: each file once, under
    its own name. (One loop only: with two, the walk of today branches at every turn and never ends.)"""
    tree = tmp_path / "tree"
    names = sorted(p.name for p in (tiny_root / "90001" / "0").iterdir())[:2]
    for name in names:
        (tree / "90001" / "0").mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_root / "90001" / "0" / name, tree / "90001" / "0" / name)
    (tree / "90001" / "1").mkdir()
    (tree / "90001" / "1" / "back").symlink_to("../..", target_is_directory=True)  # the loop
    (tree / "picked").symlink_to("90001/0", target_is_directory=True)  # a folder inside the tree, again
    (tree / "90001" / "same.png").symlink_to(f"0/{names[0]}")  # a file, again
    assert index_files(tree).paths == [f"90001/0/{n}" for n in names]
