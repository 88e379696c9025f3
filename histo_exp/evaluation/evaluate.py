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
    bootstrap_by_patient,
    choose_threshold,
    metrics_table,
    split_metrics,
)
from histo_exp.evaluation.plots import figures
from histo_exp.model.stop_check import StopCheck
from histo_exp.settings import Eval

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Everything the run logs about the best model."""

    threshold: float | None  # None: more than 2 classes, decided by the most probable
    metrics: dict[str, float]  # val_* and test_* (and test_*_ci_low / _ci_high)
    table: str
    plots: list[Path] = field(default_factory=list)
    maps: list[Path] = field(default_factory=list)


def predict(model: keras.Model, batches: PatchBatches, patients: np.ndarray | None = None) -> Scores:
    """Probabilities for every patch of ``batches`` (which must not shuffle): the positive (IDC) class's of a
    2-class model, every class's (n, classes) of a model of more."""
    prob = model.predict(batches, verbose=0, callbacks=[StopCheck()])
    prob = prob[:, 1] if prob.shape[1] == 2 else prob
    return Scores(batches.targets.astype(int), prob.astype(float),
                  None if patients is None else patients[batches.indices])


def decision(val: Scores, method: str | float) -> float | None:
    """The threshold on the positive class chosen on validation; None (argmax) for more than 2 classes."""
    return None if val.multiclass else choose_threshold(val.y_true, val.y_prob, method)


def evaluate(model: keras.Model | None, val: Scores, data: PatchData, cfg: Eval, out: Path,
             seed: int) -> Evaluation:
    """Pick the decision on the validation scores, score the test patients with ``model``, draw the figures.

    ``val`` are the validation (or out-of-fold) predictions of the search; ``model`` is None when
    there are no test patients to score (``data.test_fraction=0``), leaving validation metrics only.
    Two classes: a threshold on the second; more: the most probable class, ``auc`` their macro mean.
    """
    method, names = cfg.threshold, data.classes
    threshold = decision(val, method)
    table_names = names if val.multiclass else None
    val_m = split_metrics(val, threshold, names)
    metrics = {f"val_{k}": v for k, v in val_m.items()} | ({} if threshold is None else {"threshold": threshold})
    if model is None:
        table = metrics_table(val_m, None, {}, threshold, method, 0, table_names)
        return Evaluation(threshold, metrics, table)
    test = predict(model, split_batches(data, "test", cfg.batch_size), data.patients)
    test_m = split_metrics(test, threshold, names)
    ci = bootstrap_by_patient(test, threshold, cfg.bootstrap, seed, names=names)
    metrics |= {f"test_{k}": v for k, v in test_m.items()}
    for name, (lo, hi) in ci.items():
        metrics[f"test_{name}_ci_low"], metrics[f"test_{name}_ci_high"] = lo, hi
    plots = figures(test, threshold, names, out) if cfg.plots else []
    table = metrics_table(val_m, test_m, ci, threshold, method, np.unique(test.patients).size, table_names)
    rows = data.split.test
    maps = patient_maps(test.patients, data.x[rows], data.y[rows], test.y_true, test.y_prob, threshold,
                        out / "maps", images=data.images, rows=rows, limit=cfg.max_maps)
    return Evaluation(threshold, metrics, table, plots, maps)
