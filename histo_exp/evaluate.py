"""Score the best model on held-out patients and draw its ROC curve."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from histo_exp.data.batches import PatchBatches  # noqa: E402


@dataclass
class Scores:
    """IDC probabilities of one split and their true labels."""

    y_true: np.ndarray
    y_prob: np.ndarray

    @property
    def auc(self) -> float:
        return float(roc_auc_score(self.y_true, self.y_prob))


def predict(model: keras.Model, batches: PatchBatches) -> Scores:
    """IDC-class probabilities for every patch of ``batches`` (which must not shuffle)."""
    prob = model.predict(batches, verbose=0)[:, 1]
    return Scores(y_true=batches.targets.astype(int), y_prob=prob.astype(float))


def plot_roc(scores: Scores, path: Path, title: str = "ROC on test patients") -> Path:
    """Save the ROC curve with its AUC to ``path``."""
    fpr, tpr, _ = roc_curve(scores.y_true, scores.y_prob)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.plot(fpr, tpr, lw=2, label=f"best model (AUC = {scores.auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
           title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
