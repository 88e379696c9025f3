"""A search over the CNN's options (batch norm, GAP head, VGG-style blocks) saves a model that predicts;
without figures (eval.plots=false, as the benchmarks run) it draws none."""

import csv

import keras
import numpy as np

from histo_exp.model.saving import load_model

from helpers import TINY, flat_layers, predict


def kinds(model: keras.Model) -> list[str]:
    return [type(layer).__name__ for layer in flat_layers(model)]


def test_a_search_over_the_options_saves_a_model_that_predicts(run_cli, tmp_path, tiny_root):
    """The CLI searches the options (a bool and a str choice, a fixed int); predict reads its model."""
    done = run_cli([*TINY, "tuner.max_trials=1", "logger=none", "eval.bootstrap=20", "eval.max_maps=0",
                    "model.batch_norm={choice: [true]}", "model.head={choice: [gap]}",
                    "model.convs_per_block=2", "eval.plots=false"], timeout=480)
    assert done.returncode == 0, done.stderr[-3000:]
    [out] = [p.parent for p in tmp_path.glob("outputs/*/*/best_model.keras")]
    with open(out / "trials.csv") as f:
        [trial] = list(csv.DictReader(f))
    assert trial["status"] == "COMPLETED"
    assert not list(out.rglob("*.png")) and (out / "dataset_card.csv").exists()  # the card's table, no mosaic
    assert (trial["batch_norm"], trial["head"]) == ("1", "gap")  # KerasTuner keeps a bool choice as 0/1
    assert "convs_per_block" not in trial  # fixed, not searched
    model, meta = load_model(out / "best_model.keras")
    assert meta["image_size"] == 32
    layers = kinds(model)
    assert layers.count("Conv2D") == 2 * int(trial["blocks"]) == layers.count("BatchNormalization")
    assert "GlobalAveragePooling2D" in layers and "Flatten" not in layers
    assert all(not layer.use_bias for layer in flat_layers(model) if isinstance(layer, keras.layers.Conv2D))
    with open(predict([f"model={out / 'best_model.keras'}", f"input={tiny_root}", f"output={tmp_path}/p.csv"])) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 240 and all(r["error"] == "" for r in table)
    prob = np.array([float(r["prob_idc"]) for r in table])
    assert ((0 <= prob) & (prob <= 1)).all() and prob.std() > 0
    assert {r["label"] for r in table} <= {"0", "1"}
