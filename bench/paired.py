"""Paired comparisons for ``make bench-quality``: two rows on the same seeds and folds, and a bootstrap
interval for their difference that resamples seeds and whole patients.

Why paired: one seed's luck on one patient moves a row's pooled AUC more than most settings do, so
rows are compared seed by seed (the same folds, the same seed), and the interval carries both sources
of chance: which seeds were run and which patients were left out. Every seed leaves out the same
patients, so the two are crossed, not nested: each resample draws seeds with replacement and one
resample of the patients (with replacement, within strata, so that every resample still holds the
rarer class), and applies that same patient draw to every drawn seed and to both rows. A patient who
favours one row on every seed then counts once, as one patient, not once per seed.

Resampling whole patients weighs each patient's patches by how often the patient was drawn. AUC and
balanced accuracy are sums over pairs of patients and over patients, so each seed's predictions are
reduced once to per-patient counts, and every resample is then a few small matrix products.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000


@dataclass(frozen=True)
class Pooled:
    """One row's out-of-fold predictions for one seed, every fold pooled: a value per patch."""

    patient: np.ndarray  # str
    label: np.ndarray  # 0 or 1
    prob: np.ndarray  # the positive class's probability
    pred: np.ndarray  # 0 or 1 at the model's own threshold


@dataclass(frozen=True)
class Counts:
    """A ``Pooled`` summed per patient (in ``patients``' order): all that a resample of patients needs."""

    patients: tuple[str, ...]
    above: np.ndarray  # (P, P): pairs of a positive of p scored above a negative of q (ties count half)
    pos: np.ndarray  # positives per patient
    neg: np.ndarray
    true_pos: np.ndarray  # positives predicted positive
    true_neg: np.ndarray


def counts(pooled: Pooled, patients: Sequence[str]) -> Counts:
    """``pooled`` reduced to per-patient counts, the patients in the given order (all of them present)."""
    missing = set(patients) ^ set(np.unique(pooled.patient).tolist())
    if missing:
        raise ValueError(f"the predictions and the patients to resample differ: {sorted(missing)}")
    pos_scores, neg_scores, out = [], [], {k: [] for k in ("pos", "neg", "true_pos", "true_neg")}
    for p in patients:
        mine = pooled.patient == p
        label, prob, pred = pooled.label[mine], pooled.prob[mine], pooled.pred[mine]
        pos_scores.append(prob[label == 1])
        neg_scores.append(np.sort(prob[label == 0]))
        out["pos"].append((label == 1).sum())
        out["neg"].append((label == 0).sum())
        out["true_pos"].append(((label == 1) & (pred == 1)).sum())
        out["true_neg"].append(((label == 0) & (pred == 0)).sum())
    above = np.array([[(np.searchsorted(neg, pos, "left") + np.searchsorted(neg, pos, "right")).sum() / 2
                       for neg in neg_scores] for pos in pos_scores], dtype=float)
    return Counts(tuple(patients), above, *(np.array(out[k], dtype=float) for k in out))


def auc(c: Counts, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of the patches, each patient's weighted by ``weights`` (resamples x patients): the
    Mann-Whitney statistic over weighted pairs of patients, as scikit-learn's on the repeated patches."""
    weights = np.atleast_2d(weights)
    pairs = np.einsum("bp,pq,bq->b", weights, c.above, weights)
    return pairs / ((weights @ c.pos) * (weights @ c.neg))


def balanced_accuracy(c: Counts, weights: np.ndarray) -> np.ndarray:
    """The mean of sensitivity and specificity, the patients weighted as in ``auc``."""
    weights = np.atleast_2d(weights)
    return 0.5 * (weights @ c.true_pos / (weights @ c.pos) + weights @ c.true_neg / (weights @ c.neg))


def patient_draws(strata: Sequence[Sequence[str]], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` resamples of the patients (columns: the strata's patients in order): each stratum's patients
    drawn with replacement, as many as it has; each entry how often that patient was drawn."""
    columns = []
    for stratum in strata:
        drawn = rng.integers(0, len(stratum), size=(n, len(stratum)))
        columns.append(np.stack([(drawn == i).sum(axis=1) for i in range(len(stratum))], axis=1))
    return np.concatenate(columns, axis=1).astype(float)


@dataclass(frozen=True)
class Interval:
    mean: float  # the mean over the shared seeds of (row - reference), on the patients as they are
    low: float
    high: float

    @property
    def verdict(self) -> str:
        """"better" or "worse" only when the 95% interval excludes 0."""
        return "better" if self.low > 0 else "worse" if self.high < 0 else "no difference shown"


@dataclass(frozen=True)
class Comparison:
    seeds: tuple[int, ...]
    auc: Interval
    bal_acc: Interval


def _interval(point: np.ndarray, per_seed: np.ndarray, rng: np.random.Generator) -> Interval:
    """``per_seed``: (seeds, resamples), resample b's patient draw the same on every seed. Resample b
    draws as many seeds as there are, with replacement, and averages their differences under draw b."""
    seeds, n = per_seed.shape
    which = rng.integers(0, seeds, size=(n, seeds))
    boot = per_seed[which, np.arange(n)[:, None]].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return Interval(float(point.mean()), float(low), float(high))


def compare(row: Mapping[int, Pooled], ref: Mapping[int, Pooled], strata: Sequence[Sequence[str]],
            resamples: int = RESAMPLES, seed: int = 0) -> Comparison | None:
    """Row against reference on the seeds both have (None when they share none). The two must have
    scored the same patches of the same patients (checked on each patient's class counts)."""
    seeds = tuple(sorted(set(row) & set(ref)))
    if not seeds:
        return None
    rng = np.random.default_rng(seed)
    patients = [p for stratum in strata for p in stratum]
    draws = patient_draws(strata, resamples, rng)
    everyone = np.ones((1, len(patients)))
    diffs = {"auc": [], "acc": []}
    points = {"auc": [], "acc": []}
    for s in seeds:
        a, b = counts(row[s], patients), counts(ref[s], patients)
        if not (np.array_equal(a.pos, b.pos) and np.array_equal(a.neg, b.neg)):
            raise ValueError(f"seed {s}: the two rows did not score the same patches of each patient")
        for key, metric in (("auc", auc), ("acc", balanced_accuracy)):
            diffs[key].append(metric(a, draws) - metric(b, draws))
            points[key].append((metric(a, everyone) - metric(b, everyone))[0])
    return Comparison(seeds, *(_interval(np.array(points[k]), np.array(diffs[k]), rng) for k in ("auc", "acc")))


def spread(values: Sequence[float]) -> str:
    """A row's spread over seeds: standard deviation and range."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return "-"
    return f"sd {v.std(ddof=1):.3f}, range {v.max() - v.min():.3f}"
