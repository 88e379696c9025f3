"""External validation: a saved model scored on a labelled cohort it never saw (``python -m histo_exp.evaluate``).

Every usable patch of the cohort is scored (no split: the cohort is all test), at the model's own decision
(its threshold, chosen on its search's validation patients; the most probable class for more than 2 classes),
with the search's metrics and their 95% CIs resampling whole patients, and whole sites where the source names
them. Nothing here trains or picks a threshold.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from histo_exp.classes import IDC_NAMES, model_classes
from histo_exp.data import sources
from histo_exp.data.batches import split_batches
from histo_exp.data.dataset import PatchData, class_label, decode, patch_data
from histo_exp.data.index import Manifest
from histo_exp.data.split import Split
from histo_exp.errors import UsageError
from histo_exp.evaluation.evaluate import Evaluation, predict
from histo_exp.evaluation.maps import patient_maps
from histo_exp.evaluation.metrics import (
    CLASS_METRICS,
    METRICS,
    bootstrap_by_patient,
    class_key,
    split_metrics,
)
from histo_exp.evaluation.plots import figures
from histo_exp.settings import Data, Eval

log = logging.getLogger(__name__)


@dataclass
class Cohort:
    """Every indexed file of the cohort (``manifest``), and its usable patches as one test part (``data``)."""

    data: PatchData
    manifest: Manifest
    usable: np.ndarray

    @property
    def rows(self) -> np.ndarray:
        return self.data.split.test


def load_cohort(cfg: Data) -> Cohort:
    """Index and decode (or reuse the cache of) the cohort ``cfg`` describes: every usable patch, no split."""
    manifest = sources.read(cfg)
    log.info("indexed %d patches under %s", len(manifest), manifest.root)
    cached, rows = decode(cfg, manifest)
    none = np.empty(0, dtype=rows.dtype)
    return Cohort(patch_data(cfg, manifest, cached, Split(none, none, rows)), manifest, cached.usable)


def check_classes(meta: Mapping, outputs: int, cohort: Cohort) -> None:
    """The model must decide between the cohort's classes, in the same order, and the cohort hold each one."""
    theirs, ours = list(meta.get("classes", IDC_NAMES)), model_classes(cohort.data.classes)
    if theirs != ours or outputs != len(ours):
        raise UsageError(f"the model's classes {theirs} ({outputs} outputs) are not the cohort's {ours} "
                         f"(under {cohort.data.root}): pass data.classes=[...] naming the cohort's class folders "
                         "in the model's order, or a cohort of the model's classes")
    counts = np.bincount(cohort.data.labels[cohort.rows], minlength=len(ours))
    missing = [class_label(c) for c, n in zip(cohort.data.classes, counts, strict=True) if n == 0]
    if missing:
        raise UsageError(f"the cohort under {cohort.data.root} has no usable patch of {', '.join(missing)}: "
                         "its AUC is undefined; score a cohort of every class (or python -m histo_exp.predict)")


def score(model: keras.Model, meta: Mapping, cohort: Cohort, cfg: Eval, out: Path,
          seed: int) -> tuple[Evaluation, np.ndarray]:
    """Score every usable patch at the model's decision: the metrics (``test_*``, as a search logs them), their
    CIs by patient (and by site), the figures and maps; and each file's probabilities (NaN: not usable)."""
    data, rows = cohort.data, cohort.rows
    threshold = meta.get("threshold", 0.5) if len(data.classes) == 2 else None
    if "threshold" not in meta and threshold is not None:
        log.warning("the model carries no histo_exp metadata: using threshold 0.5")
    scores = predict(model, split_batches(data, "test", cfg.batch_size), data.patients)
    names = data.classes
    values = split_metrics(scores, threshold, names)
    by_patient = bootstrap_by_patient(scores, threshold, cfg.bootstrap, seed, names=names)
    by_site = {} if data.sites is None else bootstrap_by_patient(
        dataclasses.replace(scores, patients=data.sites[rows]), threshold, cfg.bootstrap, seed, names=names)
    metrics = {f"test_{k}": v for k, v in values.items()} | ({} if threshold is None else {"threshold": threshold})
    for suffix, ci in (("", by_patient), ("_site", by_site)):
        for name, (lo, hi) in ci.items():
            metrics[f"test_{name}{suffix}_ci_low"], metrics[f"test_{name}{suffix}_ci_high"] = lo, hi
    out.mkdir(parents=True, exist_ok=True)
    plots = figures(scores, threshold, names, out) if cfg.plots else []
    maps = patient_maps(scores.patients, data.x[rows], data.y[rows], scores.y_true, scores.y_prob, threshold,
                        out / "maps", images=data.images, rows=rows, limit=cfg.max_maps)
    groups = (np.unique(scores.patients).size, None if data.sites is None else np.unique(data.sites[rows]).size)
    table = cohort_table(values, by_patient, by_site, threshold, names, groups)
    prob = np.full((len(cohort.manifest), *scores.y_prob.shape[1:]), np.nan)
    prob[rows] = scores.y_prob
    return Evaluation(threshold, metrics, table, plots, maps), prob


def cohort_table(values: Mapping[str, float], by_patient: Mapping[str, tuple[float, float]],
                 by_site: Mapping[str, tuple[float, float]], threshold: float | None, names: Sequence[str],
                 groups: tuple[int, int | None]) -> str:
    """One row per metric: the cohort's value, its 95% CI by patient and, where the source names sites, by site."""
    multiclass = threshold is None
    decision = (f"decision: the most probable of {len(names)} classes; auc and pr_auc are macro one-vs-rest means"
                if multiclass else f"decision threshold {threshold:.3f} (the model's own)")
    patients, sites = groups
    heads = [f"95% CI by patient ({patients})"] + ([] if sites is None else [f"by site ({sites})"])
    widths = [max(len(h), 16) for h in heads]
    rows = (*CLASS_METRICS, *map(class_key, names)) if multiclass else METRICS
    lines = [decision, (f"{'metric':18s} {'cohort':>7s}"
                        + "".join(f"   {h:{w}s}" for h, w in zip(heads, widths, strict=True))).rstrip()]
    for name in rows:
        cells = [f"[{ci[name][0]:.3f}, {ci[name][1]:.3f}]" if name in ci else "" for ci in (by_patient, by_site)]
        cells = cells[:len(widths)]
        lines.append((f"{name:18s} {values[name]:7.4f}"
                      + "".join(f"   {c:{w}s}" for c, w in zip(cells, widths, strict=True))).rstrip())
    return "\n".join(lines)
