"""The dataset card (a mosaic, patches per patient) and the check for images found twice (a leak)."""

import csv
import dataclasses
import io
import json
import logging
import shutil
import signal

import matplotlib.image
import numpy as np
import pytest
from test_data import data_cfg
from test_pcam import read, write_pcam
from test_split import patch_data

from histo_exp import signals
from histo_exp.data import cache_arrays
from histo_exp.data.cache import HASHES, KEY, ingest
from histo_exp.data.cache_arrays import hash_rows
from histo_exp.data.card import CARD_CSV, CARD_PNG, DUPLICATES_CSV, duplicates, write_card
from histo_exp.data.dataset import load
from histo_exp.data.index import index
from histo_exp.data.split import Split


def test_the_decode_and_the_array_paths_hash_the_same_pixels_alike(tiny_root, tmp_path):
    m = index(tiny_root)
    decoded = ingest(m, tmp_path / "a", 50, progress=False)
    assert decoded.hashes.dtype == np.uint64 and np.unique(decoded.hashes).size == len(m)  # all distinct
    pixels = np.asarray(decoded.images)
    arrays = dataclasses.replace(m, pixels=lambda: iter([(np.arange(0, 100), pixels[:100]),
                                                        (np.arange(100, len(m)), pixels[100:])]))
    copied = ingest(arrays, tmp_path / "b", 50, progress=False)
    assert copied.folder != decoded.folder and np.array_equal(np.asarray(copied.images), pixels)
    assert np.array_equal(copied.hashes, decoded.hashes)
    assert np.array_equal(decoded.hashes, hash_rows(pixels))


def test_rows_copied_in_the_kernel_are_hashed_from_the_file(tmp_path):
    root = tmp_path / "pcam"
    images = np.concatenate(list(write_pcam(root).values()))
    cached = ingest(read(root), tmp_path / "cache", 96, progress=False)
    assert np.array_equal(cached.hashes, hash_rows(images))
    assert np.array_equal(np.load(cached.folder / HASHES), cached.hashes)


def test_a_cache_of_the_older_format_is_built_again_once_with_its_hashes(tiny_root, tmp_path, caplog):
    m = index(tiny_root)
    first = ingest(m, tmp_path, 50, progress=False)
    stats = json.loads((first.folder / KEY).read_text())
    stats["format"] = 2
    del stats["bytes"][HASHES]
    (first.folder / KEY).write_text(json.dumps(stats))
    (first.folder / HASHES).unlink()
    with caplog.at_level(logging.INFO, logger="histo_exp.data"):
        again = ingest(index(tiny_root), tmp_path, 50, progress=False)
    assert again.built and "written by an older histo_exp (cache format 2, this one reads 3" in caplog.text
    assert np.array_equal(again.hashes, first.hashes)
    assert not ingest(index(tiny_root), tmp_path, 50, progress=False).built


def test_the_card_has_a_mosaic_and_each_patients_patches_of_each_class(tiny_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        data = load(data_cfg(tiny_root, cache_dir=str(tmp_path / "ingest")), progress=False)
    assert "identical images" not in caplog.text
    written = write_card(data, tmp_path / "out", per_class=5)
    assert [p.name for p in written] == [CARD_PNG, CARD_CSV]  # no copies: no duplicates.csv
    assert matplotlib.image.imread(written[0]).shape[:2] == (2 * 130, 5 * 100)  # 100 px a patch, a row a class
    rows = list(csv.DictReader(io.StringIO(written[1].read_text())))
    assert list(rows[0]) == ["patient", "split", "n_0", "n_1"]
    assert len(rows) == 6 and sorted(r["patient"] for r in rows) == sorted(np.unique(data.patients))
    for row in rows:
        mine = data.labels[data.patients == row["patient"]]
        assert (int(row["n_0"]), int(row["n_1"])) == ((mine == 0).sum(), (mine == 1).sum())
        assert row["split"] == data.split.patients(data.patients)[row["patient"]]
    again = write_card(data, tmp_path / "again", per_class=5)
    assert again[0].read_bytes() == written[0].read_bytes()  # seeded: the same patches


def test_an_image_under_two_patients_is_found_warned_and_listed(tiny_root, tmp_path, caplog):
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    source = sorted((root / "90001" / "1").iterdir())[0]
    copy = root / "90004" / "1" / "90004_idx5_x9999_y9999_class1.png"
    shutil.copyfile(source, copy)
    with caplog.at_level(logging.WARNING):
        data = load(data_cfg(root), progress=False)
    found = duplicates(data)
    assert len(found) == 1 and found[0].patients == ("90001", "90004") and found[0].pairs == 1
    said = [r.getMessage() for r in caplog.records if "identical images" in r.getMessage()]
    assert len(said) == 1 and "1 pairs" in said[0] and "inflates every metric" in said[0]
    assert source.name in said[0] and copy.name in said[0]
    written = write_card(data, tmp_path / "out")
    assert written[-1].name == DUPLICATES_CSV
    listed = list(csv.DictReader(io.StringIO(written[-1].read_text())))
    assert [(r["image"], r["patient"], r["one_colour"]) for r in listed] == [("1", "90001", "False"),
                                                                          ("1", "90004", "False")]
    assert listed[1]["path"].endswith(copy.name)


def test_copies_in_two_parts_are_found_and_copies_of_one_patient_in_one_part_are_not(tmp_path):
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1], np.int8)
    patients = np.array(["a", "a", "a", "b", "b", "c", "c", "c"])
    sites = np.array(["s0"] * 3 + ["s1"] * 5)
    split = Split(train=np.array([0, 1, 2]), val=np.array([3, 4]), test=np.array([5, 6, 7]))
    data = patch_data(labels, patients, split, ("0", "1"), sites)
    data.images = np.random.default_rng(0).integers(0, 256, (8, 4, 4, 3), dtype=np.uint8)
    data.images[2] = data.images[0]  # patient a twice, in train: no leak
    data.images[7] = data.images[6] = data.images[4] = 255  # b (val) and c (test): in two parts; blank
    found = duplicates(data)  # no cache folder: hashed from the images
    assert len(found) == 1
    assert found[0].rows == (4, 6, 7) and found[0].parts == ("val", "test", "test") and found[0].pairs == 2
    assert found[0].first_pair == (0, 1)
    written = write_card(data, tmp_path, per_class=2)
    assert written[1].read_text().splitlines() == ["patient,site,split,n_0,n_1", "a,s0,train,2,1",
                                                   "b,s1,val,1,1", "c,s1,test,1,2"]
    assert written[2].read_text().splitlines() == ["image,path,patient,split,pairs,one_colour",
                                                   "1,row 4,b,val,2,True", "1,row 6,c,test,2,True",
                                                   "1,row 7,c,test,2,True"]


def test_a_stop_while_hashing_the_file_ends_it_within_a_slice(monkeypatch):
    monkeypatch.setattr(cache_arrays, "HASH_SLICE", 2)
    hashed = []
    monkeypatch.setattr(cache_arrays, "hash_rows", lambda rows: hashed.append(len(rows)) or np.zeros(len(rows)))
    signals._state.received.append(signal.SIGTERM)  # as the handler records a stop whose raise was lost
    try:
        with pytest.raises(signals.Stopped):
            cache_arrays.hash_file(np.zeros((100, 2, 2, 3), np.uint8), workers=2)
    finally:
        signals.reset()
    assert hashed == []
