"""Prediction in this process: one file, a folder, a patient tree, bad files, the model's own metadata."""

import csv
import shutil

import keras_tuner as kt
import numpy as np
import pytest

from histo_exp.data.decode import decode
from histo_exp.data.index import index
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
