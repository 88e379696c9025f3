"""The prediction CLI: one file, a folder, a patient tree, bad files, the model's own metadata."""

import csv
from pathlib import Path
import shutil
import subprocess
import sys

import keras
import keras_tuner as kt
import pytest

from histo_exp.model.saving import read_meta, save_model
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from histo_exp.config import CONFIG_DIR
from histo_exp.predict import predict_files

from helpers import cli_env, hypermodel


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    hm = hypermodel({"blocks": 1, "filters": 8, "dense_units": [8, 8, 8]}, {}, (32, 32, 1))
    path = tmp_path_factory.mktemp("model") / "best_model.keras"
    return save_model(hm.build(kt.HyperParameters()), path,
                      {"image_size": 32, "color": "gray", "threshold": 0.25})


def main(overrides):
    """``python -m histo_exp.predict`` in this process: the same config, composed."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR / "commands"), version_base="1.3"):
            cfg = compose("predict", overrides=[f"paths.work_dir={Path.cwd()}", *overrides])
    finally:
        GlobalHydra.instance().clear()
    return predict_files(cfg)


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_the_model_file_carries_what_prediction_needs(model_path):
    assert read_meta(model_path) == {"image_size": 32, "color": "gray", "threshold": 0.25}
    assert keras.models.load_model(model_path, compile=False).input_shape == (None, 32, 32, 1)


def test_a_patient_tree_gives_rows_and_maps(model_path, tiny_root, tmp_path):
    out = main([f"model={model_path}", f"input={tiny_root}", f"output={tmp_path}/p.csv"])
    table = rows(out)
    assert len(table) == 240
    first = table[0]
    assert first["patient"] == "90001" and first["x"] and first["error"] == ""
    assert all(r["label"] == str(int(float(r["prob_idc"]) >= 0.25)) for r in table)
    assert sorted(p.name for p in (tmp_path / "p_maps").iterdir()) == [f"{90001 + i}.png" for i in range(6)]


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


def test_missing_arguments_and_unknown_models_say_what_to_pass(tmp_path, tiny_root):
    done = subprocess.run([sys.executable, "-m", "histo_exp.predict", "input=x"], cwd=tmp_path,
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "missing model" in done.stderr and "Usage" in done.stderr
    with pytest.raises(FileNotFoundError, match="neither a .keras file, nor a run"):
        main(["model=0123456789abcdef", f"input={tiny_root}", f"tracking_uri=sqlite:///{tmp_path}/m.db"])
