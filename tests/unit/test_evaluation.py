"""Metrics against scikit-learn, threshold choice, patient bootstrap, plots and slide maps."""

import cv2
import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from histo_exp.data.index import index
from histo_exp.evaluation.maps import STEP, THUMB, grid, mosaic, plot_patient_map
from histo_exp.evaluation.metrics import (
    Scores,
    binary_metrics,
    bootstrap_by_patient,
    choose_threshold,
    metrics_table,
    rank_auc,
)
from histo_exp.evaluation.plots import plot_confusion, plot_history, plot_pr, plot_roc, plot_trials

from helpers import REPO


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.35 * y + rng.normal(0.35, 0.2, 400), 0, 1)
    return Scores(y, p, np.repeat([f"p{i}" for i in range(8)], 50))


def test_metrics_equal_scikit_learn(scores):
    y, p = scores.y_true, scores.y_prob
    m = binary_metrics(y, p, 0.5)
    pred = p >= 0.5
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["specificity"] == pytest.approx(recall_score(1 - y, ~pred))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))


def test_thresholds_maximise_their_criterion(scores):
    y, p = scores.y_true, scores.y_prob
    youden = choose_threshold(y, p, "youden")
    f1 = choose_threshold(y, p, "f1")
    assert choose_threshold(y, p, 0.5) == 0.5
    def j(t):
        m = binary_metrics(y, p, t)
        return m["sensitivity"] + m["specificity"]
    grid_ = np.unique(p)
    assert j(youden) >= max(j(t) for t in grid_) - 1e-9
    assert f1_score(y, p >= f1) >= max(f1_score(y, p >= t) for t in grid_) - 1e-9
    with pytest.raises(ValueError, match="youden, f1 or a number"):
        choose_threshold(y, p, "median")


def test_bootstrap_resamples_whole_patients(scores):
    ci = bootstrap_by_patient(scores, 0.5, n=200, seed=1)
    assert ci["auc"][0] < scores.auc < ci["auc"][1]
    assert 0 <= ci["f1"][0] < ci["f1"][1] <= 1
    assert ci == bootstrap_by_patient(scores, 0.5, n=200, seed=1)
    # One patient per class and nothing else: a patient bootstrap often draws one class only.
    lone = Scores(np.array([0] * 5 + [1] * 5), np.linspace(0, 1, 10), np.repeat(["a", "b"], 5))
    narrow = bootstrap_by_patient(lone, 0.5, n=50, seed=0)
    assert narrow["auc"] == (1.0, 1.0)
    # Two patients, each ranked right inside but one scored higher overall: resamples of whole
    # patients give AUC 1 ({a,a}, {b,b}) or 0.75 ({a,b}) and nothing else; resampling single
    # patches would also draw mixes such as (a0, b0, a1, a1) with AUC 0.5.
    offset = Scores(np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.8, 0.9]), np.array(["a", "a", "b", "b"]))
    assert bootstrap_by_patient(offset, 0.5, n=200, seed=0)["auc"] == (0.75, 1.0)


def test_the_f1_interval_spans_the_f1_of_whole_patient_resamples():
    """Two patients: a resample is {a, a}, {a, b} or {b, b}, so the 95% interval of 400 draws runs from the
    lowest to the highest F1 (scikit-learn's) of those three; F1 differs from precision and recall in each."""
    y_a, p_a = np.array([0, 1, 1, 0, 1]), np.array([0.6, 0.5, 0.2, 0.1, 0.9])  # 0.5: at the threshold, IDC
    y_b, p_b = np.array([1, 0, 0, 1, 0, 0]), np.array([0.8, 0.55, 0.3, 0.4, 0.2, 0.7])
    scores = Scores(np.concatenate([y_a, y_b]), np.concatenate([p_a, p_b]), np.array(["a"] * 5 + ["b"] * 6))
    f1s = [f1_score(y, p >= 0.5) for y, p in ((y_a, p_a), (np.r_[y_a, y_b], np.r_[p_a, p_b]), (y_b, p_b))]
    aucs = [roc_auc_score(y, p) for y, p in ((y_a, p_a), (np.r_[y_a, y_b], np.r_[p_a, p_b]), (y_b, p_b))]
    ci = bootstrap_by_patient(scores, 0.5, n=400, seed=0)
    assert ci["f1"] == pytest.approx((min(f1s), max(f1s)))
    assert ci["auc"] == pytest.approx((min(aucs), max(aucs)))
    narrower = bootstrap_by_patient(scores, 0.5, n=400, seed=0, level=0.2)  # the middle 20%: the {a, b} draws
    assert narrower["f1"] == pytest.approx((f1s[1], f1s[1]))


@pytest.mark.parametrize("seed", range(12))
def test_the_f1_threshold_gives_the_best_f1_of_every_cut(seed):
    """On small cohorts with ties, scored against scikit-learn's F1 at every distinct score."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 30)
    y[:2] = (0, 1)
    p = np.round(np.clip(0.25 * y + rng.random(30) * 0.75, 0, 1), 1)
    best = max(f1_score(y, p >= t) for t in np.unique(p))
    assert f1_score(y, p >= choose_threshold(y, p, "f1")) == pytest.approx(best)


def test_threshold_choices_at_the_edges_stay_probabilities_and_reach_the_highest_score():
    # Only the highest score is IDC: the F1 cut is that score (the last cut precision_recall_curve gives).
    assert choose_threshold(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.9]), "f1") == pytest.approx(0.9)
    # 2 IDC patches in 20, ranked 3rd and 9th: the best F1 (0.40, 1 caught with 2 false alarms) is a cut where
    # precision + recall < 1, above the cut that catches both (F1 0.36): a low-prevalence slide's case.
    y = np.array([0, 0, 1, 0, 0, 0, 0, 0, 1] + [0] * 11)
    p = np.linspace(0.95, 0.0, 20)
    assert choose_threshold(y, p, "f1") == pytest.approx(p[2])
    assert f1_score(y, p >= p[2]) == pytest.approx(0.4) and f1_score(y, p >= p[8]) == pytest.approx(4 / 11)
    # A scorer that ranks every patch the wrong way: no cut beats calling nothing IDC, which Youden's
    # index says as roc_curve's infinite first threshold, reported as 1.0 (a probability, not inf).
    assert choose_threshold(np.array([1, 0]), np.array([0.2, 0.8]), "youden") == 1.0


def test_sensitivity_and_specificity_of_a_single_patch_of_a_class():
    m = binary_metrics(np.array([1, 0, 0]), np.array([0.9, 0.2, 0.7]), 0.5)
    assert (m["sensitivity"], m["specificity"]) == pytest.approx((1.0, 0.5))
    m = binary_metrics(np.array([0, 1, 1]), np.array([0.1, 0.8, 0.3]), 0.5)
    assert (m["sensitivity"], m["specificity"]) == pytest.approx((0.5, 1.0))


def test_a_patch_at_the_threshold_is_called_idc_as_roc_curve_counts_it():
    """scikit-learn's ROC points call a score >= the threshold positive; the metrics at a chosen threshold must
    be that point's, or the reported sensitivity is not the one the threshold was chosen for."""
    y = np.array([0, 0, 1, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.4, 0.7, 0.7, 0.9])
    m = binary_metrics(y, p, 0.4)  # by hand: called IDC = the five at 0.4 or above
    assert (m["sensitivity"], m["specificity"], m["accuracy"]) == pytest.approx((3 / 3, 1 / 3, 4 / 6))
    fpr, tpr, thresholds = roc_curve(y, p)
    for t, expected_tpr, expected_fpr in zip(thresholds[1:], tpr[1:], fpr[1:], strict=True):
        at = binary_metrics(y, p, float(t))
        assert (at["sensitivity"], 1 - at["specificity"]) == pytest.approx((expected_tpr, expected_fpr))
    youden = choose_threshold(y, p, "youden")
    best = int(np.argmax(tpr - fpr))
    assert youden == pytest.approx(thresholds[best])


def test_the_end_of_run_table_is_the_one_the_readme_shows():
    """README.md's example table is the reference: the same numbers give the same text, line for line."""
    readme = (REPO / "README.md").read_text()
    shown = readme[readme.index("decision threshold 0.197"):readme.index("[20:56:46][INFO] outputs")].rstrip()
    rows = {line.split()[0]: line.split()[1:] for line in shown.splitlines()[2:]}
    val = {name: float(cells[0]) for name, cells in rows.items()}
    test = {name: float(cells[1]) for name, cells in rows.items()}
    ci = {name: (float(cells[2].strip("[,")), float(cells[3].strip("]"))) for name, cells in rows.items() if len(cells) > 2}
    assert set(ci) == {"auc", "f1"}
    assert metrics_table(val, test, ci, 0.197, "youden", 4) == shown
    assert metrics_table(val, None, {}, 0.5, 0.5, 0).splitlines()[:3] == [
        "decision threshold 0.500 (eval.threshold=0.5, chosen on validation)",
        "metric                 val   (no test patients: data.test_fraction=0)",
        "auc                 0.9487"]
    wide = metrics_table(val, test, ci, 0.197, "youden", 10).splitlines()[1]
    assert wide == "metric                 val    test   test 95% CI (by patient)"  # 10 patients or more: no caveat
    three = {"auc": 0.9, "pr_auc": 0.8, "f1": 0.7, "balanced_accuracy": 0.6, "accuracy": 0.5, "auc_a": 0.91,
             "auc_b c": 0.25}
    assert metrics_table(three, None, {}, None, "youden", 0, ("a", "b c")).splitlines() == [
        "decision: the most probable of 2 classes; auc and pr_auc are macro one-vs-rest means",
        "metric                 val   (no test patients: data.test_fraction=0)",
        "auc                 0.9000", "pr_auc              0.8000", "f1                  0.7000",
        "balanced_accuracy   0.6000", "accuracy            0.5000", "auc_a               0.9100",
        "auc_b c             0.2500"]


def test_plots_are_non_empty_pngs_of_sane_size(scores, tmp_path):
    import cv2

    paths = [
        plot_roc(scores, 0.5, tmp_path / "roc.png"),
        plot_pr(scores, 0.5, tmp_path / "pr.png"),
        plot_confusion(scores, 0.5, tmp_path / "cm.png"),
        plot_history([{"loss": [0.7, 0.5], "val_loss": [0.6, 0.55], "auc": [0.7, 0.8],
                       "val_auc": [0.75, 0.8]}], tmp_path / "h.png", "trial 0"),
        plot_history([{"loss": [0.7, 0.5], "val_auc": [0.75, 0.8]}, {"loss": [0.6], "val_auc": [0.7]}],
                     tmp_path / "folds.png", "trial 1, two folds"),
        plot_trials([({"lr": 1e-3, "act": "relu"}, 0.8), ({"lr": 1e-2, "act": "elu"}, 0.7)],
                    tmp_path / "t.png"),
    ]
    for path in paths:
        img = cv2.imread(str(path))
        assert img is not None and 300 <= img.shape[0] <= 2000 and 300 <= img.shape[1] <= 2000
        assert img.std() > 10  # something is drawn


def test_slide_map_puts_each_patch_at_its_place(tiny_root, tmp_path):
    m = index(tiny_root)
    mine = m.patients == m.patients[0]
    x, y, labels = m.x[mine], m.y[mine], m.labels[mine]
    prob = np.where(labels == 1, 0.9, 0.1)  # a model that knows the pattern
    truth, predicted = grid(x, y, labels), grid(x, y, prob)
    assert np.array_equal(np.isnan(truth), np.isnan(predicted))
    assert (predicted[truth == 1] > 0.5).all() and (predicted[truth == 0] < 0.5).all()
    col, row = (x[0] - x.min()) // 50, (y[0] - y.min()) // 50
    assert truth[row, col] == labels[0]
    images = np.zeros((mine.sum(), 50, 50, 3), np.uint8)
    path = plot_patient_map(m.patients[0], x, y, labels, prob, tmp_path / "map.png", images, 0.5)
    assert path.stat().st_size > 5000


@pytest.mark.parametrize("n, decimals", [(7, 1), (300, 2), (2000, 6)])
def test_the_bootstraps_auc_equals_scikit_learns_with_ties(n, decimals):
    rng = np.random.default_rng(n)
    y = rng.integers(0, 2, n)
    y[:2] = (0, 1)
    p = np.round(np.clip(0.3 * y + rng.random(n), 0, 1), decimals)  # rounding makes ties
    assert rank_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert rank_auc(y, np.full(n, 0.5)) == 0.5


@pytest.mark.parametrize("channels", [3, 1])
def test_the_tissue_mosaic_puts_each_shrunk_patch_at_its_place(channels):
    """The one-resize mosaic equals shrinking each patch on its own and placing it by its coordinates."""
    rng = np.random.default_rng(0)
    cells = rng.choice(12 * 9, 40, replace=False)
    x, y = (cells % 12) * STEP + 1, (cells // 12) * STEP + 1
    images = rng.integers(0, 256, (40, 50, 50, channels), dtype=np.uint8)
    out = mosaic(x, y, images)
    assert out.shape[:2] == ((y.max() - y.min()) // STEP * THUMB + THUMB, (x.max() - x.min()) // STEP * THUMB + THUMB)
    empty = np.ones(out.shape[:2], bool)
    for i in range(40):
        r, c = (y[i] - y.min()) // STEP * THUMB, (x[i] - x.min()) // STEP * THUMB
        alone = cv2.resize(images[i], (THUMB, THUMB), interpolation=cv2.INTER_AREA)
        assert np.array_equal(out[r:r + THUMB, c:c + THUMB], alone)
        empty[r:r + THUMB, c:c + THUMB] = False
    assert (out[empty] == 255).all()  # white where no patch is
