"""Patch-level metrics of the IDC class at a decision threshold chosen on validation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from histo_exp.errors import UsageError

METRICS = ("auc", "pr_auc", "f1", "balanced_accuracy", "sensitivity", "specificity", "accuracy")


@dataclass
class Scores:
    """IDC probabilities of one split, their true labels and patients."""

    y_true: np.ndarray
    y_prob: np.ndarray
    patients: np.ndarray | None = None

    @property
    def auc(self) -> float:
        return float(roc_auc_score(self.y_true, self.y_prob))


def choose_threshold(y_true: np.ndarray, y_prob: np.ndarray, method: str | float) -> float:
    """``youden`` (max sensitivity + specificity - 1), ``f1`` (max F1) or a fixed number."""
    if isinstance(method, (int, float)) and not isinstance(method, bool):
        return float(method)
    if method == "youden":
        fpr, tpr, thresholds = roc_curve(y_true, y_prob)
        best = int(np.argmax(tpr - fpr))
        return float(min(thresholds[best], 1.0))
    if method == "f1":
        precision, recall, thresholds = precision_recall_curve(y_true, y_prob)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        return float(thresholds[int(np.argmax(f1[:-1]))])
    raise UsageError(f"eval.threshold must be youden, f1 or a number in [0, 1]; got {method!r}")


def binary_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float) -> dict[str, float]:
    """The metrics a pathologist reads, with IDC (label 1) as the positive class."""
    y_pred = (y_prob >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    return {
        "auc": float(roc_auc_score(y_true, y_prob)),
        "pr_auc": float(average_precision_score(y_true, y_prob)),
        "f1": float(f1_score(y_true, y_pred, zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "sensitivity": float(tp / max(tp + fn, 1)),
        "specificity": float(tn / max(tn + fp, 1)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
    }


def rank_auc(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count a half): equal to scikit-learn's
    ``roc_auc_score`` and about 50 times faster on small arrays, which the bootstrap needs."""
    _, inverse, counts = np.unique(y_prob, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    positive = y_true == 1
    n1 = int(positive.sum())
    n0 = y_true.size - n1
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def bootstrap_by_patient(
    scores: Scores, threshold: float, n: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile CIs of AUC and F1, resampling whole patients (patches of one patient correlate)."""
    patients = np.unique(scores.patients)
    rows = [np.flatnonzero(scores.patients == p) for p in patients]
    rng = np.random.default_rng(seed)
    auc, f1 = [], []
    for _ in range(n):
        idx = np.concatenate([rows[i] for i in rng.integers(0, len(rows), len(rows))])
        y, p = scores.y_true[idx], scores.y_prob[idx]
        if np.unique(y).size < 2:
            continue  # AUC is undefined on one class; such resamples are left out
        auc.append(rank_auc(y, p))
        predicted = p >= threshold
        tp = int((predicted & (y == 1)).sum())
        f1.append(2 * tp / max(int(predicted.sum()) + int((y == 1).sum()), 1))
    tail = (1 - level) / 2 * 100
    if not auc:
        return {}
    return {name: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail)))
            for name, v in (("auc", auc), ("f1", f1))}


def metrics_table(val: dict[str, float], test: dict[str, float] | None,
                  ci: dict[str, tuple[float, float]], threshold: float, method: str | float,
                  test_patients: int) -> str:
    """The end-of-run table: one row per metric, validation and test side by side (test if any)."""
    lines = [f"decision threshold {threshold:.3f} (eval.threshold={method}, chosen on validation)",
             f"{'metric':18s} {'val':>7s} {'test':>7s}   test 95% CI (by patient)"]
    if test is None:
        lines[1] = f"{'metric':18s} {'val':>7s}   (no test patients: data.test_fraction=0)"
    elif test_patients < 10:
        lines[1] += f": only {test_patients} test patients, so a rough one"
    for name in METRICS:
        interval = f"   [{ci[name][0]:.3f}, {ci[name][1]:.3f}]" if name in ci else ""
        tested = f" {test[name]:7.4f}" if test is not None else ""
        lines.append(f"{name:18s} {val[name]:7.4f}{tested}{interval}")
    return "\n".join(lines)
