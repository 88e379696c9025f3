"""bench/paired.py: the paired comparison that decides data=idc's defaults (bench/quality.md)."""

import sys

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
from paired import Pooled, auc, balanced_accuracy, compare, counts, patient_draws  # noqa: E402

MIXED, IDC_ONLY = ["m1", "m2", "m3"], ["i1", "i2", "i3", "i4"]


def cohort(rng: np.random.Generator, skill: float) -> Pooled:
    """Patches of 3 mixed and 4 IDC-only patients; ``skill`` separates the classes' scores."""
    patient, label = [], []
    for p in MIXED:
        patient += [p] * 60
        label += [0] * 30 + [1] * 30
    for p in IDC_ONLY:
        patient += [p] * 20
        label += [1] * 20
    label = np.array(label)
    prob = 1 / (1 + np.exp(-(skill * (label - 0.5) + rng.normal(0, 1, label.size))))
    prob = np.round(prob, 2)  # ties, as a model's rounded outputs have
    return Pooled(np.array(patient), label, prob, (prob > 0.5).astype(int))


def test_auc_and_accuracy_of_a_patient_resample_are_scikit_learns_on_the_patches_repeated():
    rng = np.random.default_rng(0)
    pooled = cohort(rng, 1.0)
    patients = [*MIXED, *IDC_ONLY]
    draws = patient_draws([MIXED, IDC_ONLY], 5, rng)
    assert (draws == 0).any()  # some patients left out of some resamples, others drawn twice
    c = counts(pooled, patients)
    for weights in draws:
        repeat = np.array([weights[patients.index(p)] for p in pooled.patient]).astype(int)
        y, prob, pred = (np.repeat(v, repeat) for v in (pooled.label, pooled.prob, pooled.pred))
        assert auc(c, weights)[0] == pytest.approx(roc_auc_score(y, prob))
        assert balanced_accuracy(c, weights)[0] == pytest.approx(balanced_accuracy_score(y, pred))


def test_every_resample_keeps_each_strata_size_so_class_0_is_always_drawn():
    draws = patient_draws([MIXED, IDC_ONLY], 200, np.random.default_rng(1))
    assert (draws[:, :3].sum(axis=1) == 3).all() and (draws[:, 3:].sum(axis=1) == 4).all()


def test_seeds_that_repeat_one_seed_add_no_evidence():
    """Seeds and patients are crossed (every seed leaves out the same patients): copies of one seed give
    the interval of that seed alone, not a narrower one."""
    rng = np.random.default_rng(4)
    a, b = cohort(rng, 1.0), cohort(rng, 1.3)
    one = compare({1: b}, {1: a}, [MIXED, IDC_ONLY], resamples=400)
    five = compare(dict.fromkeys(range(5), b), dict.fromkeys(range(5), a), [MIXED, IDC_ONLY], resamples=400)
    assert (five.auc.low, five.auc.high) == pytest.approx((one.auc.low, one.auc.high))


def test_a_row_against_itself_shows_no_difference_and_a_clearly_better_row_is_called_better():
    rng = np.random.default_rng(2)
    weak = {s: cohort(rng, 0.5) for s in (1, 2, 3)}
    strong = {s: cohort(rng, 4.0) for s in (1, 2, 3, 4)}  # seed 4: not in the reference, not compared
    same = compare(weak, weak, [MIXED, IDC_ONLY], resamples=300)
    assert same.auc.mean == 0 and same.auc.low == 0 and same.auc.high == 0
    assert same.auc.verdict == "no difference shown"
    better = compare(strong, weak, [MIXED, IDC_ONLY], resamples=300)
    assert better.seeds == (1, 2, 3)
    assert better.auc.low > 0 and better.auc.verdict == "better" and better.bal_acc.verdict == "better"
    worse = compare(weak, strong, [MIXED, IDC_ONLY], resamples=300)
    assert worse.auc.verdict == "worse" and worse.auc.mean == pytest.approx(-better.auc.mean)
    assert compare(weak, {5: weak[1]}, [MIXED, IDC_ONLY]) is None
    other = {1: Pooled(*(v[:-1] for v in (weak[1].patient, weak[1].label, weak[1].prob, weak[1].pred)))}
    with pytest.raises(ValueError, match="same patches"):
        compare(other, weak, [MIXED, IDC_ONLY])


def test_a_small_difference_on_few_seeds_is_not_called_either_way():
    rng = np.random.default_rng(3)
    a = {s: cohort(rng, 1.0) for s in (1, 2, 3)}
    b = {s: cohort(rng, 1.05) for s in (1, 2, 3)}
    result = compare(b, a, [MIXED, IDC_ONLY], resamples=500)
    assert result.auc.low < 0 < result.auc.high and result.auc.verdict == "no difference shown"
