"""Paired comparisons for ``make bench-quality``: two rows on the same seeds and folds, and a bootstrap
interval for their difference that resamples seeds and, within each seed, whole patients.

Why paired: one seed's luck on one patient moves a row's pooled AUC more than most settings do, so
rows are compared seed by seed (the same folds, the same seed), and the interval carries both sources
of chance: which seeds were run (resampled with replacement) and which patients were left out
(resampled with replacement within strata, so that every resample still holds the rarer class).

Resampling whole patients is a weighting of the pooled patches by how often their patient was drawn,
so each resample's AUC is a weighted Mann-Whitney statistic, computed for every resample at once.
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


def weighted_auc(label: np.ndarray, prob: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of ``weights`` (resamples x patches): ties count half, as scikit-learn's."""
    order = np.argsort(prob, kind="stable")
    prob, label, weights = prob[order], label[order], np.atleast_2d(weights)[:, order]
    starts = np.flatnonzero(np.r_[True, prob[1:] != prob[:-1]])  # groups of tied scores
    pos = np.add.reduceat(weights * (label == 1), starts, axis=1)
    neg = np.add.reduceat(weights * (label == 0), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives scored lower than each group
    return (pos * (below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))


def weighted_balanced_accuracy(label: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The mean of sensitivity and specificity for each row of ``weights``."""
    weights = np.atleast_2d(weights)
    pos, neg = weights * (label == 1), weights * (label == 0)
    return 0.5 * ((pos * (pred == 1)).sum(axis=1) / pos.sum(axis=1)
                  + (neg * (pred == 0)).sum(axis=1) / neg.sum(axis=1))


def patient_draws(strata: Sequence[Sequence[str]], n: int, rng: np.random.Generator) -> list[dict[str, int]]:
    """``n`` resamples of the patients: each stratum's patients drawn with replacement, as many as it has;
    each resample as {patient: times drawn}."""
    out: list[dict[str, int]] = [{} for _ in range(n)]
    for stratum in strata:
        drawn = rng.integers(0, len(stratum), size=(n, len(stratum)))
        for counts, row in zip(out, drawn, strict=True):
            for i in row:
                counts[stratum[i]] = counts.get(stratum[i], 0) + 1
    return out


def _weights(patients: np.ndarray, draws: list[dict[str, int]]) -> np.ndarray:
    names, index = np.unique(patients, return_inverse=True)
    counts = np.array([[d.get(name, 0) for name in names] for d in draws], dtype=float)
    return counts[:, index]


def _per_seed(row: Pooled, ref: Pooled, draws: list[dict[str, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(AUC difference, balanced-accuracy difference) of row minus reference in each patient resample."""
    w_row, w_ref = _weights(row.patient, draws), _weights(ref.patient, draws)
    auc = weighted_auc(row.label, row.prob, w_row) - weighted_auc(ref.label, ref.prob, w_ref)
    acc = (weighted_balanced_accuracy(row.label, row.pred, w_row)
           - weighted_balanced_accuracy(ref.label, ref.pred, w_ref))
    return auc, acc


def _interval(point: float, per_seed: np.ndarray, rng: np.random.Generator) -> Interval:
    """Each resample draws as many seeds as there are, with replacement, and for each drawn seed one of
    its patient resamples; the difference is their mean."""
    seeds, n = per_seed.shape
    which = rng.integers(0, seeds, size=(n, seeds))
    draw = rng.integers(0, n, size=(n, seeds))
    boot = per_seed[which, draw].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return Interval(point, float(low), float(high))


def compare(row: Mapping[int, Pooled], ref: Mapping[int, Pooled], strata: Sequence[Sequence[str]],
            resamples: int = RESAMPLES, seed: int = 0) -> Comparison | None:
    """Row against reference on the seeds both have (None when they share none)."""
    seeds = tuple(sorted(set(row) & set(ref)))
    if not seeds:
        return None
    rng = np.random.default_rng(seed)
    auc, acc, auc_point, acc_point = [], [], [], []
    for s in seeds:
        a, b = _per_seed(row[s], ref[s], patient_draws(strata, resamples, rng))
        auc.append(a)
        acc.append(b)
        everyone = [{p: 1 for p in np.unique(np.r_[row[s].patient, ref[s].patient])}]
        a0, b0 = _per_seed(row[s], ref[s], everyone)
        auc_point.append(a0[0])
        acc_point.append(b0[0])
    return Comparison(seeds, _interval(float(np.mean(auc_point)), np.array(auc), rng),
                      _interval(float(np.mean(acc_point)), np.array(acc), rng))


def spread(values: Sequence[float]) -> str:
    """A row's spread over seeds: standard deviation and range."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return "-"
    return f"sd {v.std(ddof=1):.3f}, range {v.max() - v.min():.3f}"
