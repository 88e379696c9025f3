"""The folder and manifest readers: any cohort, any number of classes (data=folder, data=manifest)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_data import data_cfg

from histo_exp.data import folder, manifest_csv
from histo_exp.data.dataset import load
from histo_exp.data.index import DatasetError
from histo_exp.errors import UsageError
from histo_exp.settings import Data
from histo_exp.settings.fields import build


def write_image(path: Path, value: int = 120, size: tuple[int, int] = (50, 50)) -> Path:
    """An image file (its kind from its suffix) of one colour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((*size, 3), value, dtype=np.uint8))
    return path


def manifest_group(csv: Path, **extra) -> dict:
    """A whole ``data`` group of the manifest source (no data.root), its cache beside the CSV."""
    return {**data_cfg(csv.parent, source="manifest", manifest=str(csv), **extra), "root": None}


def folder_read(root: Path, **extra):
    return folder.read(build(Data, data_cfg(root, source="folder", **extra), "data"), progress=False)


def manifest_read(csv: Path, **extra):
    return manifest_csv.read(build(Data, manifest_group(csv, **extra), "data"), progress=False)


def write_csv(path: Path, header: str, *rows: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join((header, *rows)) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    """Two classes, one named with a space; nested patient folders; PNG beside JPEG; a non-ASCII
    patient under both classes."""
    root = tmp_path / "cohort"
    write_image(root / "benign tissue" / "Zoë" / "s1" / "a.png")
    write_image(root / "benign tissue" / "Zoë" / "s1" / "b.jpg")
    write_image(root / "benign tissue" / "p2" / "s1" / "deep" / "p2_idx5_x100_y50_class0.png")
    write_image(root / "malignant" / "Zoë" / "c.png", 200)
    write_image(root / "malignant" / "p3" / "s2" / "d.jpeg", 200)
    (root / "malignant" / "p3" / "notes.txt").write_text("not an image")
    write_image(root / ".ipynb_checkpoints" / "x.png")
    return root


def test_folder_reads_classes_patients_and_places(tree):
    m = folder_read(tree)
    assert m.classes == ("benign tissue", "malignant")
    rows = {p.replace(os.sep, "/"): (int(label), str(patient), int(x), int(y))
            for p, label, patient, x, y in zip(m.paths, m.labels, m.patients, m.x, m.y, strict=True)}
    assert rows == {
        "benign tissue/Zoë/s1/a.png": (0, "Zoë", -1, -1),
        "benign tissue/Zoë/s1/b.jpg": (0, "Zoë", -1, -1),
        "benign tissue/p2/s1/deep/p2_idx5_x100_y50_class0.png": (0, "p2", 100, 50),
        "malignant/Zoë/c.png": (1, "Zoë", -1, -1),
        "malignant/p3/s2/d.jpeg": (1, "p3", -1, -1),
    }
    assert set(np.unique(m.patients)) == {"Zoë", "p2", "p3"}  # Zoë under both classes is one patient
    assert m.root == tree and m.sites is None and m.parts is None
    assert m.ignored == [".ipynb_checkpoints/x.png"]
    assert all((m.root / p).is_file() for p in m.paths)


def test_folder_classes_follow_data_classes(tree):
    m = folder_read(tree, classes=["malignant", "benign tissue"])
    assert m.classes == ("malignant", "benign tissue")
    assert [int(label) for label in m.labels] == [1, 1, 0, 1, 0]  # patient by patient: Zoë, p2, p3
    with pytest.raises(DatasetError, match="data.classes lists 'normal', but .* has no folder of that name"):
        folder_read(tree, classes=["benign tissue", "malignant", "normal"])
    with pytest.raises(DatasetError, match="class folder 'malignant' that data.classes .* does not list"):
        folder_read(tree, classes=["benign tissue"])


def test_three_classes_and_the_key_follows_the_reading(tree):
    write_image(tree / "normal" / "p4" / "e.png")
    m = folder_read(tree)
    assert m.classes == ("benign tissue", "malignant", "normal")
    assert sorted(set(m.labels.tolist())) == [0, 1, 2]
    reordered = folder_read(tree, classes=["normal", "malignant", "benign tissue"])
    assert reordered.paths == m.paths and reordered.fingerprint != m.fingerprint  # labels differ: another key
    write_image(tree / "normal" / "p4" / "f.png")
    assert folder_read(tree).fingerprint != m.fingerprint


def test_folder_fingerprint_follows_the_folders(tree):
    before = folder_read(tree).fingerprint
    assert folder_read(tree).fingerprint == before
    os.rename(tree / "malignant" / "p3" / "s2", tree / "malignant" / "p3" / "s3")
    assert folder_read(tree).fingerprint != before


def test_patient_and_site_patterns(tmp_path):
    root = tmp_path / "flat"
    for cls in ("a", "b"):
        for name in ("H1-P1_0.png", "H1-P1_1.png", "H2-P2_0.png"):
            write_image(root / cls / name)
    m = folder_read(root, patient_pattern=r"/[^/]*-([^_/]+)_", site_pattern=r"/([^/-]+)-")
    assert m.patients.tolist() == ["P1"] * 4 + ["P2"] * 2  # patient by patient, as IDC's listing
    assert m.sites.tolist() == ["H1"] * 4 + ["H2"] * 2
    write_image(root / "a" / "stray.png")
    with pytest.raises(DatasetError, match=r"data.site_pattern '/\(\[\^/-\]\+\)-' does not match 'a/stray"):
        folder_read(root, patient_pattern=r"^[^/]+/([^/]+)", site_pattern=r"/([^/-]+)-")
    with pytest.raises(DatasetError, match="data.patient_pattern 'P' has no group"):
        folder_read(root, patient_pattern="P")


def test_an_image_right_in_a_class_folder_asks_for_a_patient_pattern(tree):
    write_image(tree / "malignant" / "loose.png")
    with pytest.raises(DatasetError) as err:
        folder_read(tree)
    message = str(err.value)
    assert "'malignant/loose.png' lies right in class folder 'malignant'" in message
    assert "data.patient_pattern" in message and "\n" not in message


def test_folder_errors_name_what_is_wrong(tmp_path):
    root = tmp_path / "r"
    write_image(root / "a" / "p" / "x.png")
    (root / "b").mkdir()
    with pytest.raises(DatasetError, match="class folder 'b' under .* holds no images"):
        folder_read(root)
    write_image(root / "top.png")
    with pytest.raises(DatasetError, match="'top.png' lies right in data.root"):
        folder_read(root)
    with pytest.raises(UsageError, match="does not exist or is not a folder"):
        folder_read(tmp_path / "nowhere")


def test_folder_takes_tiff_and_bmp(tmp_path):
    for name in ("a/p/x.tif", "a/p/y.tiff", "b/p/z.bmp"):
        write_image(tmp_path / "r" / name)
    assert folder_read(tmp_path / "r").paths == ["a/p/x.tif", "a/p/y.tiff", "b/p/z.bmp"]


@pytest.fixture
def listed(tmp_path) -> Path:
    """A manifest beside its images (relative paths) and one image elsewhere (an absolute path)."""
    base = tmp_path / "study"
    write_image(base / "img" / "1.png")
    write_image(base / "img" / "2.jpg")
    write_image(base / "img" / "3.tif", 200)
    far = write_image(tmp_path / "elsewhere" / "4.bmp", 200)
    return write_csv(base / "patches.csv", "path,label,patient,site,x,y",
                     "img/1.png,benign,Zoë,H1,0,50", "img/2.jpg,benign,p 2,H1,,",
                     "img/3.tif,malignant,Zoë,H2,100,150", f"{far},malignant,p3,H2,7,8")


def test_manifest_reads_relative_and_absolute_paths_and_sites(listed):
    m = manifest_read(listed)
    assert m.root == listed.parent and m.classes == ("benign", "malignant")
    assert m.labels.tolist() == [0, 0, 1, 1]
    assert m.patients.tolist() == ["Zoë", "p 2", "Zoë", "p3"]
    assert m.sites.tolist() == ["H1", "H1", "H2", "H2"] and m.parts is None
    assert m.x.tolist() == [0, -1, 100, 7] and m.y.tolist() == [50, -1, 150, 8]
    assert os.path.isabs(m.paths[3]) and m.root / m.paths[3] == Path(m.paths[3])
    assert all((m.root / p).is_file() for p in m.paths)
    assert manifest_read(listed, classes=["malignant", "benign"]).labels.tolist() == [1, 1, 0, 0]


def test_manifest_split_column_and_a_missing_image(tmp_path):
    csv = write_csv(tmp_path / "m.csv", "patient,path,label,split", "p1,a.png,x,train", "p2,b.png,y,VAL",
                    "p3,gone.png,y,test")
    m = manifest_read(csv)
    assert m.parts.tolist() == ["train", "val", "test"] and m.sites is None
    assert m.x.tolist() == [-1, -1, -1]
    assert m.paths == ["a.png", "b.png", "gone.png"]  # a missing image: no error here


def test_manifest_fingerprint_follows_the_csv(listed):
    before = manifest_read(listed).fingerprint
    assert manifest_read(listed).fingerprint == before
    listed.write_text(listed.read_text().replace("p3", "p4"))
    assert manifest_read(listed).fingerprint != before


@pytest.mark.parametrize(("lines", "extra", "message"), [
    (["path,label,patient,stain", "a.png,x,p1,he"], {},
     "has a column 'stain'; a manifest's columns are path, label, patient and optionally site, split, x, y"),
    (["path,label", "a.png,x"], {}, "has no column 'patient': a manifest needs path, label, patient"),
    (["path,label,patient,split", "b.png,x,p2,train", "a.png,x,p1,holdout"], {},
     "line 3: split 'holdout' is not one of train, val, test"),
    (["path,label,patient", "b.png,x,p2", "a.png,tumour,p1"], {"classes": ["x", "y"]},
     r"line 3: label 'tumour' is not one of data.classes \(x, y\)"),
    (["path,label,patient", "b.png,x,p2", "a.png,x,"], {}, "line 3: the patient is empty"),
    (["path,label,patient", "a.png,x,p1,extra"], {}, "line 2: 4 values for the 3 columns"),
    (["path,label,patient,x,y", "a.png,x,p1,left,0"], {}, "line 2: x is 'left', not a whole number"),
    (["path,label,patient", "slide.svs,x,p1"], {}, "line 2: 'slide.svs' is not a PNG, JPEG, TIFF or BMP"),
    (["path,label,patient", "b.png,x,p2", "b.png,x,p2"], {}, "line 3: 'b.png' is listed already, on line 2"),
    (["path,label,patient", "b.png,x,p2"], {"classes": ["x", "z"]}, "data.classes lists 'z', but no row"),
])
def test_manifest_errors_are_one_line(tmp_path, lines, extra, message):
    csv = write_csv(tmp_path / "m.csv", *lines)
    with pytest.raises(UsageError, match=message) as err:
        manifest_read(csv, **extra)
    assert isinstance(err.value, DatasetError) and "\n" not in str(err.value)


def test_load_reads_a_folder_tree(tmp_path):
    root = tmp_path / "cohort"
    for i in range(6):
        for j in range(4):
            write_image(root / "benign" / f"Pat {i}" / f"{j}.png", 60)
            write_image(root / "malignant ß" / f"Pat {i}" / "slide" / f"{j}.jpg", 200, size=(40, 40))
    data = load(data_cfg(root, source="folder", workers=1), progress=False)
    assert data.classes == ("benign", "malignant ß")
    assert set(data.patients) == {f"Pat {i}" for i in range(6)} and data.images.shape == (48, 50, 50, 3)
    assert not data.skipped and data.padded == 24
    assert data.images[data.labels == 0].mean() == pytest.approx(60, abs=1)
    assert data.kept.size == 48


def test_load_reads_a_manifest(tmp_path):
    base = tmp_path / "study"
    lines = []
    for i in range(6):
        for j, label in enumerate(("normal", "tumour") * 2):
            write_image(base / "tiles" / f"{i}_{j}.png", 60 if label == "normal" else 200)
            lines.append(f"tiles/{i}_{j}.png,{label},P{i}")
    lines.append("tiles/gone.png,tumour,P0")
    csv = write_csv(base / "patches.csv", "path,label,patient", *lines)
    data = load(manifest_group(csv, workers=1, max_bad_fraction=0.1), progress=False)
    assert data.classes == ("normal", "tumour") and data.root == base
    assert data.skipped == {"tiles/gone.png": "unreadable"}  # missing: skipped at decode, listed
    assert data.kept.size == 24 and set(data.patients) == {f"P{i}" for i in range(6)}
    assert data.images[data.kept][data.labels[data.kept] == 1].mean() == pytest.approx(200, abs=1)


def test_load_decodes_an_absolute_manifest_path(tmp_path):
    lines = [f"{write_image(tmp_path / 'tiles' / f'{i}_{j}.png', 60 + 140 * (j % 2))},{j % 2},P{i}"
             for i in range(4) for j in range(4)]
    csv = write_csv(tmp_path / "lists" / "patches.csv", "path,label,patient", *lines)
    data = load(manifest_group(csv, workers=1, test_fraction=0.0, val_fraction=0.3), progress=False)
    assert not data.skipped


def test_whole_number_classes_sort_as_numbers(tmp_path):
    csv = write_csv(tmp_path / "m.csv", "path,label,patient", "a.png,10,p1", "b.png,2,p2", "c.png,0,p3")
    assert manifest_read(csv).classes == ("0", "2", "10")


@pytest.mark.parametrize("name", ["folder", "manifest"])
def test_the_data_groups_compose(name):
    from hydra import compose, initialize_config_dir

    from histo_exp.config import CONFIG_DIR
    from histo_exp.space import to_plain

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        data = build(Data, to_plain(compose("config", [f"data={name}"]).data), "data")
    assert (data.name, data.source, data.image_size, data.root, data.manifest) == (name, name, 50, None, None)


def test_a_manifest_label_under_one_patient_only_is_said_before_any_decoding(tmp_path):
    """Train, val and test must each hold every class: a label one patient holds cannot be in all three."""
    base = tmp_path / "study"
    lines = [f"tiles/{i}_{j}.png,{('normal', 'tumour')[j % 2]},P{i}" for i in range(6) for j in range(4)]
    lines.append("tiles/rare.png,necrosis,P0")
    for line in lines:
        write_image(base / line.split(",")[0])
    csv = write_csv(base / "patches.csv", "path,label,patient", *lines)
    with pytest.raises(DatasetError, match="^class necrosis is found under 1 patient"):
        load(manifest_group(csv, workers=1), progress=False)
    assert not (tmp_path / "ingest").exists() or not any((tmp_path / "ingest").iterdir())
