"""Evaluate the search's best model on the held-out patients: metrics, CIs, plots and maps."""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from histo_exp.data.batches import PatchBatches, split_batches
from histo_exp.data.dataset import PatchData
from histo_exp.evaluation.maps import plot_patient_map
from histo_exp.evaluation.metrics import (
    Scores,
    binary_metrics,
    bootstrap_by_patient,
    choose_threshold,
    metrics_table,
)
from histo_exp.evaluation.plots import plot_confusion, plot_pr, plot_roc

log = logging.getLogger(__name__)
META = "histo_exp.json"  # stored inside the .keras zip: what prediction needs besides weights


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
    prob = model.predict(batches, verbose=0)[:, 1]
    return Scores(batches.targets.astype(int), prob.astype(float),
                  None if patients is None else patients[batches.indices])


def evaluate(model: keras.Model, data: PatchData, cfg: Mapping, batch_size: int, out: Path,
             seed: int) -> Evaluation:
    """Score validation and test, pick the threshold on validation, draw the figures."""
    val = predict(model, split_batches(data, "val", batch_size), data.patients)
    test = predict(model, split_batches(data, "test", batch_size), data.patients)
    method = cfg.get("threshold", "youden")
    threshold = choose_threshold(val.y_true, val.y_prob, method)
    val_m = binary_metrics(val.y_true, val.y_prob, threshold)
    test_m = binary_metrics(test.y_true, test.y_prob, threshold)
    ci = bootstrap_by_patient(test, threshold, int(cfg.get("bootstrap", 1000)), seed)
    metrics = {f"val_{k}": v for k, v in val_m.items()}
    metrics |= {f"test_{k}": v for k, v in test_m.items()}
    metrics["threshold"] = threshold
    for name, (lo, hi) in ci.items():
        metrics[f"test_{name}_ci_low"], metrics[f"test_{name}_ci_high"] = lo, hi
    plots = [plot_roc(test, threshold, out / "roc.png"), plot_pr(test, threshold, out / "pr.png"),
             plot_confusion(test, threshold, out / "confusion.png")]
    table = metrics_table(val_m, test_m, ci, threshold, method, np.unique(test.patients).size)
    return Evaluation(threshold, metrics, table, plots,
                      patient_maps(data, test, threshold, out / "maps", int(cfg.get("max_maps", 20))))


def patient_maps(data: PatchData, test: Scores, threshold: float, folder: Path, limit: int) -> list[Path]:
    """One slide map per test patient (the ones with most patches first, up to ``limit``)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = data.split.test
    patients, counts = np.unique(test.patients, return_counts=True)
    chosen = patients[np.argsort(-counts, kind="stable")][:limit]
    paths = []
    for patient in sorted(chosen):
        mine = test.patients == patient
        idx = rows[mine]
        paths.append(plot_patient_map(
            str(patient), data.x[idx], data.y[idx], test.y_true[mine], test.y_prob[mine],
            folder / f"{patient}.png", images=data.images[idx], threshold=threshold,
        ))
    return paths


def save_model(model: keras.Model, path: Path, meta: Mapping) -> Path:
    """Save the model and put ``meta`` (image size, colour, threshold) inside the .keras file."""
    model.save(path)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(META, json.dumps(dict(meta), indent=1))
    return path


def read_meta(path: str | Path) -> dict:
    """The metadata ``save_model`` stored, or {} for a .keras file from elsewhere."""
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read(META)) if META in z.namelist() else {}
