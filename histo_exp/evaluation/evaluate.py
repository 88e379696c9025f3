"""Evaluate the search's best model on the held-out patients: metrics, CIs, plots and maps."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from histo_exp.data.batches import PatchBatches, split_batches
from histo_exp.data.dataset import PatchData
from histo_exp.evaluation.maps import patient_maps
from histo_exp.evaluation.metrics import (
    Scores,
    binary_metrics,
    bootstrap_by_patient,
    choose_threshold,
    metrics_table,
)
from histo_exp.evaluation.plots import plot_confusion, plot_pr, plot_roc
from histo_exp.model.stop_check import StopCheck
from histo_exp.settings import Eval

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Everything the run logs about the best model."""

    threshold: float
    metrics: dict[str, float]  # val_* and test_* (and test_*_ci_low / _ci_high)
    table: str
    plots: list[Path] = field(default_factory=list)
    maps: list[Path] = field(default_factory=list)


def predict(model: keras.Model, batches: PatchBatches, patients: np.ndarray | None = None) -> Scores:
    """IDC-class probabilities for every patch of ``batches`` (which must not shuffle)."""
    prob = model.predict(batches, verbose=0, callbacks=[StopCheck()])[:, 1]
    return Scores(batches.targets.astype(int), prob.astype(float),
                  None if patients is None else patients[batches.indices])


def evaluate(model: keras.Model | None, val: Scores, data: PatchData, cfg: Eval, out: Path,
             seed: int) -> Evaluation:
    """Pick the threshold on the validation scores, score the test patients with ``model``, draw the figures.

    ``val`` are the validation (or out-of-fold) predictions of the search; ``model`` is None when
    there are no test patients to score (``data.test_fraction=0``), leaving validation metrics only.
    """
    method = cfg.threshold
    threshold = choose_threshold(val.y_true, val.y_prob, method)
    val_m = binary_metrics(val.y_true, val.y_prob, threshold)
    metrics = {f"val_{k}": v for k, v in val_m.items()} | {"threshold": threshold}
    if model is None:
        table = metrics_table(val_m, None, {}, threshold, method, 0)
        return Evaluation(threshold, metrics, table)
    test = predict(model, split_batches(data, "test", cfg.batch_size), data.patients)
    test_m = binary_metrics(test.y_true, test.y_prob, threshold)
    ci = bootstrap_by_patient(test, threshold, cfg.bootstrap, seed)
    metrics |= {f"test_{k}": v for k, v in test_m.items()}
    for name, (lo, hi) in ci.items():
        metrics[f"test_{name}_ci_low"], metrics[f"test_{name}_ci_high"] = lo, hi
    plots = [plot_roc(test, threshold, out / "roc.png"), plot_pr(test, threshold, out / "pr.png"),
             plot_confusion(test, threshold, out / "confusion.png")]
    table = metrics_table(val_m, test_m, ci, threshold, method, np.unique(test.patients).size)
    rows = data.split.test
    maps = patient_maps(test.patients, data.x[rows], data.y[rows], test.y_true, test.y_prob, threshold,
                        out / "maps", images=data.images, rows=rows, limit=cfg.max_maps)
    return Evaluation(threshold, metrics, table, plots, maps)
