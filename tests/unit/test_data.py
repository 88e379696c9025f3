"""Indexing, decoding, splitting and batching of IDC-layout folders."""

import logging
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from histo_exp.data.batches import PatchBatches
from histo_exp.data.dataset import load
from histo_exp.data.decode import decode, fit_patch
from histo_exp.data.device import on_device
from histo_exp.data.index import DatasetError, index, save_listing
from histo_exp.data.split import split_by_patient
from histo_exp.data.synthetic import SyntheticSpec, generate


def data_cfg(root: Path, **extra) -> dict:
    """A whole ``data`` group (as conf/data/idc.yaml has it) for a folder of test patches."""
    return {"name": "idc", "root": str(root), "image_size": 50, "color": "rgb", "normalize": "none",
            "small_patches": "pad", "augment": {"flip": True, "rotate90": True, "hed": 0.0, "brightness": 0.0,
                                                "contrast": 0.0, "saturation": 0.0, "hue": 0.0},
            "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0, "workers": 2,
            "cache_dir": str(root.parent / "ingest"), "max_bad_fraction": 0.05, "source": "idc",
            "group_by": "patient", "classes": None, "patient_pattern": None, "site_pattern": None, "manifest": None,
            **extra}


def write_patch(root: Path, patient: str, label: int, x: int = 1, y: int = 1, size=(50, 50)) -> Path:
    folder = root / patient / str(label)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{patient}_idx5_x{x}_y{y}_class{label}.png"
    cv2.imwrite(str(path), np.full((*size, 3), 120 + 60 * label, dtype=np.uint8))
    return path


def test_synthetic_set_has_the_idc_layout_and_is_deterministic(tmp_path):
    spec = SyntheticSpec(patients=3, patches_per_patient=20, seed=5)
    a, b = generate(tmp_path / "a", spec), generate(tmp_path / "b", spec)
    ma, mb = index(a), index(b)
    assert len(ma) == 60 and set(ma.patients) == {"90001", "90002", "90003"}
    assert ma.paths == mb.paths
    assert all(Path(p).parent.name == Path(p).stem[-1] for p in ma.paths)
    first = cv2.imread(str(a / ma.paths[0]))
    assert np.array_equal(first, cv2.imread(str(b / mb.paths[0])))
    assert generate(a, spec) == a  # reused, not remade


def test_index_parses_names_and_ignores_other_files(tiny_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    (root / "90001" / "0" / "notes.txt").write_text("not an image")
    (root / "90002" / "1" / "Thumbs.db").write_bytes(b"\0")
    m = index(root)
    assert len(m) == 240 and len(m.ignored) == 2
    assert m.labels.dtype == np.int8 and set(np.unique(m.labels)) == {0, 1}
    assert m.x.min() >= 1
    assert m.fingerprint == index(root).fingerprint  # stable while nothing changes


def test_a_kept_listing_is_reused_until_a_folder_changes(tiny_root, tmp_path):
    """A re-run lists no folder (the cached prepare of the full set in seconds); a file added or
    removed is seen at once."""
    root, memo = tmp_path / "copy", tmp_path / "listings"
    shutil.copytree(tiny_root, root)
    (root / "90001" / "0" / "notes.txt").write_text("not an image")
    listed = index(root, memo=memo)
    save_listing(memo, listed)
    reused = index(root, memo=memo)
    assert [reused.paths, reused.ignored, reused.stamps, reused.fingerprint] == [
        listed.paths, listed.ignored, listed.stamps, listed.fingerprint]
    for name in ("patients", "x", "y", "labels"):
        assert np.array_equal(getattr(reused, name), getattr(listed, name))
        assert getattr(reused, name).dtype == getattr(listed, name).dtype
    time.sleep(0.02)  # past the file system's clock tick, as any real change is
    added = write_patch(root, "90002", 1, x=9999)
    again = index(root, memo=memo)
    assert len(again) == len(listed) + 1 and str(added.relative_to(root)) in again.paths
    time.sleep(0.02)
    added.unlink()
    assert index(root, memo=memo).paths == listed.paths  # the removal is seen too


def test_index_steps_into_the_kaggle_top_folder(tmp_path):
    top = tmp_path / "archive" / "IDC_regular_ps50_idx5"
    write_patch(top, "10253", 0)
    write_patch(top, "10253", 1, x=51)
    m = index(tmp_path / "archive")
    assert len(m) == 2 and m.root == top


def test_label_folder_and_file_name_must_agree(tmp_path):
    path = write_patch(tmp_path, "8863", 1)
    path.rename(tmp_path / "8863" / "1" / "8863_idx5_x1_y1_class0.png")
    with pytest.raises(DatasetError, match="8863_idx5_x1_y1_class0.png.*class0.*folder 1"):
        index(tmp_path)


def test_missing_or_empty_root_names_the_path_and_the_layout(tmp_path):
    with pytest.raises(DatasetError, match="nowhere.*does not exist.*<patient_id>/<0\\|1>"):
        index(tmp_path / "nowhere")
    (tmp_path / "8863" / "0").mkdir(parents=True)  # an empty patient folder
    with pytest.raises(DatasetError, match="no patches found.*expected <root>/<patient_id>"):
        index(tmp_path)


def test_one_class_or_too_few_patients_cannot_be_split(tmp_path):
    labels = np.zeros(10, dtype=np.int8)
    with pytest.raises(DatasetError, match="all 10 patches are class 0"):
        split_by_patient(labels, np.repeat(["a", "b", "c", "d", "e"], 2), 0.2, 0.2, 0)
    labels = np.array([0, 1] * 5, dtype=np.int8)
    with pytest.raises(DatasetError, match="found 2 patient.*at least 3"):
        split_by_patient(labels, np.repeat(["a", "b"], 5), 0.2, 0.2, 0)


def test_a_dataset_that_cannot_be_split_fails_before_any_decoding(tmp_path):
    root = tmp_path / "one_class"
    for patient in ("90001", "90002", "90003"):
        write_patch(root, patient, 1)
    with pytest.raises(DatasetError, match="all 3 patches are class 1"):
        load(data_cfg(root))
    assert not (tmp_path / "ingest").exists()  # nothing decoded, no cache left behind


def test_patient_split_never_leaks_and_is_deterministic(tiny_root):
    m = index(tiny_root)
    a = split_by_patient(m.labels, m.patients, 0.2, 0.2, seed=7)
    b = split_by_patient(m.labels, m.patients, 0.2, 0.2, seed=7)
    parts = [set(m.patients[getattr(a, p)]) for p in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sum(map(len, parts)) == 6
    assert sorted(np.concatenate([a.train, a.val, a.test])) == list(range(len(m)))
    assert all(np.array_equal(getattr(a, p), getattr(b, p)) for p in ("train", "val", "test"))
    other = split_by_patient(m.labels, m.patients, 0.2, 0.2, seed=8)
    assert a.patients(m.patients) != other.patients(m.patients)  # the seed is what decides
    for p in ("train", "val", "test"):
        assert set(m.labels[getattr(a, p)]) == {0, 1}
    assert set(a.patients(m.patients).values()) == {"train", "val", "test"}


def test_a_cached_dataset_reads_its_split_instead_of_making_it_again(tiny_root, tmp_path, monkeypatch):
    import histo_exp.data.split as split

    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    first = load(data_cfg(root, seed=3), progress=False)
    saved = sorted(p.name for p in first.cache.glob("split-*.npz"))
    assert saved == ["split-val0.2-test0.2-seed3.npz"]
    monkeypatch.setattr(split, "split_by_patient", lambda *a: pytest.fail("split made again"))
    again = load(data_cfg(root, seed=3), progress=False)
    assert all(np.array_equal(getattr(first.split, p), getattr(again.split, p)) for p in ("train", "val", "test"))
    monkeypatch.undo()
    other = load(data_cfg(root, seed=4), progress=False)  # other settings: a split of their own
    fresh = split_by_patient(other.labels, other.patients, 0.2, 0.2, seed=4)
    assert all(np.array_equal(getattr(other.split, p), getattr(fresh, p)) for p in ("train", "val", "test"))
    assert len(list(first.cache.glob("split-*.npz"))) == 2


def test_unreadable_files_are_skipped_and_reported(tiny_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    m = index(root)
    (root / m.paths[0]).write_bytes(b"")  # zero bytes
    truncated = root / m.paths[1]
    truncated.write_bytes(truncated.read_bytes()[:40])
    data = load(data_cfg(root), progress=False)
    assert set(data.skipped) == {m.paths[0], m.paths[1]}
    assert data.kept.size == len(m) - 2 and 0 not in data.kept and 1 not in data.kept
    report = (data.cache / "skipped.tsv").read_text()
    assert m.paths[0] in report and "unreadable" in report
    with pytest.raises(DatasetError, match="2 of 240 files.*max_bad_fraction=0.005.*skipped.tsv"):
        load(data_cfg(root, max_bad_fraction=0.005), progress=False)


@pytest.mark.parametrize("policy, shape, kept", [
    ("pad", (50, 50, 3), True), ("resize", (50, 50, 3), True), ("drop", None, False),
])
def test_small_slide_edge_patches(policy, shape, kept):
    small = np.zeros((42, 50, 3), dtype=np.uint8)
    out, done = fit_patch(small, 50, policy)
    assert (out is not None) == kept
    if kept:
        assert out.shape == shape
    if policy == "pad":
        assert done == "padded" and (out[42:] == 255).all() and (out[:42] == 0).all()


def test_decode_gray_and_rgb_keep_uint8(tiny_root):
    m = index(tiny_root)
    rgb = decode(m, 32, "rgb", progress=False)
    gray = decode(m, 32, "gray", progress=False)
    assert rgb.images.shape == (240, 32, 32, 3) and gray.images.shape == (240, 32, 32, 1)
    assert rgb.images.dtype == gray.images.dtype == np.uint8
    full = cv2.cvtColor(cv2.imread(str(m.root / m.paths[5])), cv2.COLOR_BGR2RGB)
    assert np.array_equal(decode(m, 50, "rgb", progress=False).images[5], fit_patch(full, 50, "pad")[0])


def test_batches_are_plain_gathers_and_training_batches_shuffle_the_same_way_each_time():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, 20).astype(np.int8)
    idx = np.arange(3, 17)
    val = PatchBatches(images, labels, idx, 5)
    xs, ys = zip(*(val[i] for i in range(len(val))), strict=True)
    assert np.array_equal(np.concatenate(xs), images[idx])
    assert np.array_equal(np.concatenate(ys).argmax(1), labels[idx]) and len(val) == 3
    train = PatchBatches(images, labels, idx, 7, shuffle=True, seed=1)
    x, y = train[0]
    assert x.shape == (7, 8, 8, 3) and x.dtype == np.uint8 and y.shape == (7, 2)
    rows = [int(np.flatnonzero((images == img).all(axis=(1, 2, 3)))[0]) for img in x]
    assert set(rows) <= set(idx.tolist()) and list(y.argmax(1)) == list(labels[rows])  # unchanged pixels
    assert np.array_equal(PatchBatches(images, labels, idx, 7, shuffle=True, seed=1)[0][0], x)
    train.on_epoch_end()
    assert not np.array_equal(train[0][0], x)  # a new order each epoch


def test_the_generator_never_writes_over_a_real_dataset(tmp_path):
    real = write_patch(tmp_path / "mine", "8863", 0)
    with pytest.raises(FileExistsError, match="refusing to write one over it"):
        generate(tmp_path / "mine", SyntheticSpec(patients=3, patches_per_patient=5))
    assert real.exists()


def test_data_on_device_is_a_choice_the_backend_must_allow():
    """auto and false leave the memory map where it is off JAX; true there says what to change."""
    images = np.zeros((4, 50, 50, 3), np.uint8)
    assert on_device(images, "auto") is images and on_device(images, False) is images
    with pytest.raises(ValueError, match="needs the jax backend"):
        on_device(images, True)
    with pytest.raises(ValueError, match="auto, true or false"):
        on_device(images, "gpu")


def test_an_image_size_far_above_the_patches_warns_once(tiny_root, tmp_path, caplog):
    """50 px patches padded into 128 px images are mostly white: one warning, on a reuse too; into
    64 px (61% patch) none."""
    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    for attempt in ("built", "reused"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="histo_exp.data"):
            load(data_cfg(root, image_size=128), progress=False)
        said = [r.getMessage() for r in caplog.records if "much larger than the patches" in r.getMessage()]
        assert len(said) == 1, (attempt, caplog.text)
        assert "data.image_size=128" in said[0] and "typically 50x50 px" in said[0] and "240 of them" in said[0]
        assert "set data.image_size=50" in said[0] and "data.small_patches=resize" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="histo_exp.data"):
        load(data_cfg(root, image_size=64), progress=False)
        load(data_cfg(root, image_size=128, small_patches="resize"), progress=False)
    assert "much larger than the patches" not in caplog.text


def test_load_splits_by_site_or_as_the_source_gives_it(tiny_root, tmp_path, monkeypatch, caplog):
    """data.group_by=site holds out whole sites; parts the source gives are the split; a site grouping
    without sites, or a patient under two sites, fails before any decoding."""
    from histo_exp.data import sources

    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    with pytest.raises(DatasetError, match="^data.group_by=site needs each patch's site"):
        load(data_cfg(root, group_by="site"), progress=False)
    m = index(root)
    site_of = {"90001": "A", "90002": "A", "90003": "B", "90004": "B", "90005": "C", "90006": "C"}
    m.sites = np.array([site_of[p] for p in m.patients])
    wrong = m.subset(np.arange(len(m)))
    wrong.sites = np.where(np.arange(len(m)) == 0, "C", wrong.sites)  # one patch of patient 90001 under C
    monkeypatch.setattr(sources, "read", lambda cfg, progress: wrong)
    with pytest.raises(DatasetError, match="^patient 90001 is under 2 sites \\(A, C\\)"):
        load(data_cfg(root, group_by="site"), progress=False)
    assert not (tmp_path / "ingest").exists()

    monkeypatch.setattr(sources, "read", lambda cfg, progress: m)
    data = load(data_cfg(root, group_by="site"), progress=False)
    parts = [set(data.sites[getattr(data.split, p)]) for p in ("train", "val", "test")]
    assert sorted(map(len, parts)) == [1, 1, 1] and set.union(*parts) == {"A", "B", "C"}
    assert data.groups is data.sites and list(data.cache.glob("split-site-*.npz"))
    assert data.split_table().splitlines()[0] == "patient,split,patches,idc_share,site"

    m.parts = np.array([{"A": "train", "B": "val", "C": "test"}[s] for s in m.sites])
    with caplog.at_level(logging.INFO, logger="histo_exp.data"):
        given = load(data_cfg(root, val_fraction=0.5), progress=False)
    assert "used as given" in caplog.text
    for part in ("train", "val", "test"):
        assert np.array_equal(getattr(given.split, part), np.flatnonzero(m.parts == part))
