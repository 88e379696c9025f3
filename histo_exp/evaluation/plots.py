"""Figures for the search run: ROC and PR curves, confusion matrix, training curves, trials, maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from histo_exp.classes import model_classes  # noqa: E402
from histo_exp.evaluation.metrics import Scores, binary_metrics  # noqa: E402
from histo_exp.files import written  # noqa: E402


def _save(fig, path: Path) -> Path:
    """Write the figure whole or not at all, and free it either way."""
    try:
        fig.tight_layout()
        with written(path) as partial:
            fig.savefig(partial)
    finally:
        plt.close(fig)
    return path


def _subtitle(scores: Scores) -> str:
    patients = np.unique(scores.patients).size if scores.patients is not None else "?"
    return f"{scores.y_true.size} patches, {patients} patients"


def plot_roc(scores: Scores, threshold: float, path: Path, title: str = "ROC, test patients") -> Path:
    """ROC curve with the operating point at ``threshold``."""
    fpr, tpr, _ = roc_curve(scores.y_true, scores.y_prob)
    m = binary_metrics(scores.y_true, scores.y_prob, threshold)
    fig, ax = plt.subplots(figsize=(4.8, 4.8), dpi=120)
    ax.plot(fpr, tpr, lw=2, label=f"best model (AUC = {m['auc']:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    ax.plot(1 - m["specificity"], m["sensitivity"], "o", c="crimson", ms=8,
            label=f"threshold {threshold:.2f}: sens {m['sensitivity']:.2f}, spec {m['specificity']:.2f}")
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
           title=f"{title}\n{_subtitle(scores)}", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_pr(scores: Scores, threshold: float, path: Path, title: str = "Precision-recall, test patients") -> Path:
    """Precision-recall curve of the IDC class with the operating point."""
    precision, recall, _ = precision_recall_curve(scores.y_true, scores.y_prob)
    m = binary_metrics(scores.y_true, scores.y_prob, threshold)
    y_pred = scores.y_prob >= threshold
    op_precision = (y_pred & (scores.y_true == 1)).sum() / max(y_pred.sum(), 1)
    fig, ax = plt.subplots(figsize=(4.8, 4.8), dpi=120)
    ax.plot(recall, precision, lw=2, label=f"best model (PR-AUC = {m['pr_auc']:.3f})")
    ax.axhline(scores.y_true.mean(), ls="--", c="grey", lw=1, label="chance (IDC share)")
    ax.plot(m["sensitivity"], op_precision, "o", c="crimson", ms=8,
            label=f"threshold {threshold:.2f}: F1 {m['f1']:.2f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01),
           title=f"{title}\n{_subtitle(scores)}")
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_confusion(scores: Scores, threshold: float | None, path: Path,
                   names: Sequence[str] = ("no IDC", "IDC")) -> Path:
    """Confusion matrix, counts and row shares: at the threshold (2 classes), or of the most probable class."""
    predicted = np.argmax(scores.y_prob, axis=1) if threshold is None else scores.y_prob >= threshold
    ticks = list(range(len(names)))
    cm = confusion_matrix(scores.y_true, predicted, labels=ticks)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = max(4.2, 1.1 * len(names) + 1.6)
    fig, ax = plt.subplots(figsize=(side, side - 0.4), dpi=120)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, f"{count}\n{share[i, j]:.1%}", ha="center", va="center",
                color="white" if share[i, j] > 0.5 else "black")
    decided = "the most probable class" if threshold is None else f"threshold {threshold:.2f}"
    ax.set(xticks=ticks, yticks=ticks, xticklabels=names, yticklabels=names,
           xlabel="predicted", ylabel="true", title=f"Test patients, {decided}")
    return _save(fig, path)


def plot_class_curves(scores: Scores, names: Sequence[str], path: Path, kind: str) -> Path:
    """More than 2 classes: each class's one-vs-rest ROC (``kind="roc"``) or precision-recall curve."""
    fig, ax = plt.subplots(figsize=(4.8, 4.8), dpi=120)
    for k, name in enumerate(names):
        truth = scores.y_true == k
        if kind == "roc":
            x, y, _ = roc_curve(truth, scores.y_prob[:, k])
            ax.plot(x, y, lw=2, label=f"{name} (AUC = {roc_auc_score(truth, scores.y_prob[:, k]):.3f})")
        else:
            y, x, _ = precision_recall_curve(truth, scores.y_prob[:, k])
            ax.plot(x, y, lw=2, label=f"{name} (PR-AUC = {average_precision_score(truth, scores.y_prob[:, k]):.3f})")
    if kind == "roc":
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC, one class against the rest\n"
               f"{_subtitle(scores)}")
    else:
        ax.set(xlabel="recall", ylabel="precision", title=f"Precision-recall, one class against the rest\n"
               f"{_subtitle(scores)}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
    return _save(fig, path)


def figures(test: Scores, threshold: float | None, names: Sequence[str], out: Path) -> list[Path]:
    """The test patients' ROC, PR and confusion figures: at the threshold for 2 classes, per class for more."""
    if threshold is not None:
        return [plot_roc(test, threshold, out / "roc.png"), plot_pr(test, threshold, out / "pr.png"),
                plot_confusion(test, threshold, out / "confusion.png", model_classes(names))]
    return [plot_class_curves(test, names, out / "roc.png", "roc"), plot_class_curves(test, names, out / "pr.png", "pr"),
            plot_confusion(test, None, out / "confusion.png", names)]


def plot_history(histories: Sequence[Mapping[str, Sequence[float]]], path: Path, title: str) -> Path:
    """Loss and AUC per epoch, train (solid) against validation (dashed), one colour per patient fold."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), dpi=120)
    folds = len(histories) > 1
    for ax, name in zip(axes, ("loss", "auc"), strict=True):
        for fold, history in enumerate(histories):
            for prefix, style in (("", "-"), ("val_", "--")):
                values = history.get(prefix + name)
                if values:
                    label = ("validation" if prefix else "train") + (f" fold {fold}" if folds else "")
                    ax.plot(np.arange(1, len(values) + 1), values, style, marker="o", color=f"C{fold}",
                            label=label)
        ax.set(xlabel="epoch", ylabel=name, title=name)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def plot_trials(trials: Sequence[tuple[Mapping[str, object], float]], path: Path) -> Path:
    """Each trial's val AUC against each searched hyperparameter (one panel per hyperparameter)."""
    names = sorted({k for hp, _ in trials for k in hp if not k.startswith("tuner/")})
    cols = min(4, max(1, len(names)))
    rows = int(np.ceil(len(names) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), dpi=110, squeeze=False)
    scores = np.array([s for _, s in trials], dtype=float)
    best = int(np.nanargmax(scores)) if np.isfinite(scores).any() else -1
    for ax, name in zip(axes.flat, names, strict=False):
        values = [hp.get(name) for hp, _ in trials]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            x = np.array(values, dtype=float)
        else:
            levels = sorted({str(v) for v in values})
            x = np.array([levels.index(str(v)) for v in values], dtype=float)
            ax.set_xticks(range(len(levels)), levels)
        ax.scatter(x, scores, c="tab:blue")
        if best >= 0:
            ax.scatter(x[best], scores[best], c="crimson", s=60, label="best")
        if numeric and x.min() > 0 and x.max() / x.min() > 20:  # log-uniform ranges
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set(xlabel=name, ylabel="val AUC")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"{len(trials)} trials: validation AUC against each hyperparameter")
    return _save(fig, path)
