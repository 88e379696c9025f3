"""Any number of classes: the synthetic set, the model's head and loss, the metrics, figures and maps of N > 2,
and the 2-class path left as it was."""

import collections
import json

import keras
import keras_tuner as kt
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from histo_exp.classes import model_classes
from histo_exp.data.synthetic import SyntheticSpec, generate
from histo_exp.evaluation.maps import plot_patient_map
from histo_exp.evaluation.metrics import (
    Scores,
    bootstrap_by_patient,
    class_metrics,
    metrics_table,
    split_metrics,
)
from histo_exp.evaluation.plots import figures
from histo_exp.model.cnn import IdcAUC, auc_metric, build_cnn
from histo_exp.model.hypermodel import balanced_weights
from histo_exp.record import run_note

from helpers import hypermodel as make_hypermodel

NAMES = ("class 0", "class 1", "class 2")


def three_class_scores(n: int = 300, patients: int = 12, seed: int = 0) -> Scores:
    """Probabilities that lean to the true class, for patients that each hold every class."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    logits = rng.normal(0, 1, (n, 3)) + 1.5 * np.eye(3)[y]
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return Scores(y, prob, np.array([f"p{i % patients}" for i in range(n)]))


def test_a_three_class_synthetic_set_is_made_in_the_folder_layout_beside_the_binary_one(tmp_path):
    spec = SyntheticSpec(patients=3, patches_per_patient=40, seed=1, classes=3)
    root = generate(tmp_path / "synth", spec)
    assert root == tmp_path / "synth_c3" and spec.class_names() == NAMES
    files = sorted(root.rglob("*.png"))
    assert {f.relative_to(root).parts[0] for f in files} == set(NAMES)
    assert all(len(f.relative_to(root).parts) == 3 and f.name.startswith(f.parent.name) for f in files)
    counts = collections.Counter(f.relative_to(root).parts[0] for f in files)
    assert len(files) == 120 and min(counts.values()) > 0
    assert json.loads((root / "synthetic.json").read_text())["classes"] == 3
    binary = SyntheticSpec(patients=3, patches_per_patient=5)
    assert "classes" not in binary.record() and binary.folder(tmp_path / "synth") == tmp_path / "synth"


def test_the_head_loss_and_metric_follow_the_class_count():
    model = build_cnn((16, 16, 3), blocks=1, filters=4, dense_units=(8,), classes=3)
    assert model.output_shape == (None, 3)
    hm = make_hypermodel({"blocks": 1, "filters": 4, "dense_units": [8]}, {"learning_rate": 1e-3}, (16, 16, 3),
                         classes=3)
    three = hm.build(kt.HyperParameters())
    assert isinstance(three.loss, keras.losses.CategoricalCrossentropy)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    history = three.fit(x, np.eye(3, dtype="float32")[np.arange(12) % 3], epochs=1, verbose=0)
    assert np.isfinite(history.history["auc"][0]) and three.predict(x, verbose=0).shape == (12, 3)
    two = make_hypermodel({"blocks": 1, "filters": 4, "dense_units": [8]}, {"learning_rate": 1e-3}, (16, 16, 3))
    binary = two.build(kt.HyperParameters())
    assert isinstance(binary.loss, keras.losses.BinaryCrossentropy) and binary.output_shape == (None, 2)
    assert isinstance(auc_metric(2), IdcAUC) and auc_metric(3).multi_label and auc_metric(3).name == "auc"


def test_balanced_weights_for_n_classes_keep_the_binary_ones():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    weights = balanced_weights(labels, 3)
    assert list(weights) == [0, 1, 2] and np.isclose(sum(w * (labels == k).sum() for k, w in weights.items()), 10)
    assert balanced_weights(np.array([0, 0, 0, 1])) == pytest.approx({0: 4 / 6, 1: 2.0})


def test_macro_auc_is_scikit_learns_one_vs_rest_and_each_class_is_logged():
    scores = three_class_scores()
    m = class_metrics(scores.y_true, scores.y_prob, NAMES)
    assert m["auc"] == pytest.approx(roc_auc_score(scores.y_true, scores.y_prob, multi_class="ovr"))
    assert m["auc"] == pytest.approx(np.mean([m[f"auc_{n}"] for n in NAMES]))
    assert scores.auc == pytest.approx(m["auc"]) and split_metrics(scores, None, NAMES) == m
    assert 0 < m["f1"] <= 1 and 0 < m["balanced_accuracy"] <= 1


def test_the_decisions_macro_means_are_those_counted_by_hand():
    """Classes of 3, 2 and 1 patches (macro, micro and weighted F1 all differ), decided by the most probable."""
    y = np.array([0, 0, 0, 1, 1, 2])
    decided = np.array([0, 0, 1, 1, 1, 0])
    prob = np.full((6, 3), 0.1) + 0.7 * np.eye(3)[decided]
    prob[:, 2] += np.array([0.0, 0.05, 0.0, 0.0, 0.0, 0.1])  # class 2's own column ranks its patch first
    prob /= prob.sum(axis=1, keepdims=True)
    m = class_metrics(y, prob, NAMES)
    # F1 per class: 2*2/(2*2+1+1), 2*2/(2*2+1+0), 0 (class 2 never decided): macro = their mean.
    assert m["f1"] == pytest.approx((4 / 6 + 4 / 5 + 0) / 3)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 2 / 2 + 0 / 1) / 3)  # each class's recall, averaged
    assert m["accuracy"] == pytest.approx(4 / 6)
    # One-vs-rest AUCs by hand: class 2's patch scores highest in its column (AUC 1).
    assert m["auc_class 2"] == pytest.approx(1.0)
    assert m["auc"] == pytest.approx(np.mean([m[f"auc_{n}"] for n in NAMES]))
    for k, name in enumerate(NAMES):
        assert m[f"auc_{name}"] == pytest.approx(roc_auc_score(y == k, prob[:, k]))
    # pr_auc: the mean of each class's average precision; class 2's one patch is ranked first (AP 1).
    assert m["pr_auc"] == pytest.approx(np.mean([average_precision_score(y == k, prob[:, k]) for k in range(3)]))


def test_class_cis_by_patient_bracket_each_class_auc_and_the_table_has_a_row_per_class():
    scores = three_class_scores()
    ci = bootstrap_by_patient(scores, None, n=60, seed=1, names=NAMES)
    m = class_metrics(scores.y_true, scores.y_prob, NAMES)
    assert set(ci) == {"auc", *(f"auc_{n}" for n in NAMES)}
    assert all(lo <= m[k] + 0.05 and m[k] - 0.05 <= hi for k, (lo, hi) in ci.items())
    table = metrics_table(m, m, ci, None, "youden", 12, NAMES)
    assert "most probable of 3 classes" in table and "auc_class 2" in table and "sensitivity" not in table


def test_the_binary_bootstrap_is_unchanged():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    scores = Scores(y, np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1), np.array([f"p{i % 9}" for i in range(200)]))
    ci = bootstrap_by_patient(scores, 0.5, n=50, seed=0)
    assert set(ci) == {"auc", "f1"}  # as before: the AUC and F1 of the positive class


def test_three_class_figures_and_maps_are_drawn(tmp_path):
    scores = three_class_scores(n=90, patients=3)
    paths = figures(scores, None, NAMES, tmp_path)
    assert [p.name for p in paths] == ["roc.png", "pr.png", "confusion.png"] and all(p.stat().st_size for p in paths)
    x, y = np.arange(90) % 10 * 50, np.arange(90) // 10 * 50
    assert plot_patient_map("p0", x, y, scores.y_true, scores.y_prob, tmp_path / "map.png").exists()


def test_the_model_keeps_idc_names_and_others_their_own():
    assert model_classes(("0", "1")) == ["no IDC", "IDC"]
    assert model_classes(("benign", "malignant")) == ["benign", "malignant"]
    assert run_note(("0", "1")) == {} and "macro one-vs-rest" in run_note(NAMES)["mlflow.note.content"]


def test_predict_rows_keep_idc_and_name_other_classes():
    from histo_exp.predict import class_names, scored

    assert class_names({}) is None and class_names({"classes": ["no IDC", "IDC"]}) is None
    assert scored(np.float64(0.7), 0.5, None) == ["0.700000", 1]  # IDC: prob_idc and 0/1, as always
    assert scored(np.float64(0.25), 0.3, ["benign", "tumour"]) == ["0.750000", "0.250000", "benign"]
    assert scored(np.array([0.2, 0.5, 0.3]), None, list(NAMES)) == ["0.200000", "0.500000", "0.300000", "class 1"]
