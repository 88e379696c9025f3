"""One experiment: data -> KerasTuner search -> best model on test patients -> tracker."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from sklearn.exceptions import ConvergenceWarning

from histo_exp.config import config_yaml
from histo_exp.data.batches import Augment, split_batches
from histo_exp.data.dataset import PatchData, load
from histo_exp import __version__
from histo_exp.evaluate import evaluate, save_model
from histo_exp.distributed import (kerastuner_env, record_search_run, recorded_search_run, role, search_lock,
                                   wait_for_search_run)
from histo_exp.evaluation.plots import plot_trials
from histo_exp.model.hypermodel import CNNHyperModel
from histo_exp.tracking import NullTracker, flatten
from histo_exp.trials import from_tuner_dir, trials_csv
from histo_exp.tuning import build_tuner, format_hparams, tuner_folder

log = logging.getLogger(__name__)


def class_weight(data: PatchData, mode: str | None) -> dict[int, float] | None:
    """``auto``: inverse class frequency on the training split (weights average to 1)."""
    if mode in (None, "none"):
        return None
    if mode != "auto":
        raise ValueError(f"trainer.class_weight must be auto or none; got {mode!r}")
    counts = np.bincount(data.labels[data.split.train], minlength=2)
    return {c: float(counts.sum() / (2 * counts[c])) for c in (0, 1)}


def build_search(cfg: DictConfig, data: PatchData, tracker: NullTracker) -> Any:
    """The configured KerasTuner tuner over the CNN hypermodel (resumed from its folder if there)."""
    trainer = cfg.trainer
    weights = class_weight(data, trainer.get("class_weight"))
    if weights:
        log.info("class weights (trainer.class_weight=auto): %s",
                 ", ".join(f"{c}: {w:.3f}" for c, w in weights.items()))
    hypermodel = CNNHyperModel(
        cfg.model, cfg.optimizer, data.input_shape, epochs=int(trainer.epochs),
        early_stopping_patience=trainer.get("early_stopping_patience"),
        steps_per_epoch=trainer.get("steps_per_epoch"), class_weight=weights,
        precision=str(trainer.get("precision", "float32")),
    )
    return build_tuner(cfg.tuner, hypermodel, tracker)


def search(cfg: DictConfig, data: PatchData, tuner: Any) -> None:
    """Run the tuner's trials (a chief serves the oracle instead, until its workers are done)."""
    trainer = cfg.trainer
    augment = Augment.from_config(cfg.data.get("augment"))
    with warnings.catch_warnings():  # the Gaussian process's fit notes, once per trial: noise here
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        tuner.search(
            split_batches(data, "train", trainer.batch_size, cfg.seed, augment),
            validation_data=split_batches(data, "val", trainer.batch_size, cfg.seed),
            verbose=int(trainer.verbose),
        )


def best_model(tuner: Any) -> tuple[keras.Model, Any]:
    """The best trial's model (weights from its checkpoint in the tuner folder) and the trial."""
    best = tuner.oracle.get_best_trials(1)
    if not best or best[0].score is None:
        raise RuntimeError(
            "every trial failed, so there is no best model; the trial errors are in the log "
            "above and on the trial runs in MLflow"
        )
    with warnings.catch_warnings():  # reloading weights only: the optimizer state is not needed
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return tuner.get_best_models(1)[0], best[0]


@functools.cache
def provenance() -> dict[str, str]:
    """Package version, git commit of the source checkout (if any), Keras version and backend."""
    tags = {"histo_exp.version": __version__, "histo_exp.keras_backend": keras.backend.backend(),
            "histo_exp.keras_version": keras.__version__}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            tags["histo_exp.git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def log_results(cfg: DictConfig, data: PatchData, model: keras.Model, tuner: Any, trial: Any,
                tracker: NullTracker, out: Path) -> dict[str, float]:
    """Evaluate the best model and log metrics, plots, maps, the model and the split."""
    result = evaluate(model, data, cfg.eval, int(cfg.trainer.batch_size), out, int(cfg.seed))
    metrics = {"best_val_auc": float(trial.score), **result.metrics}
    tracker.log_metrics(metrics)
    meta = {"image_size": int(cfg.data.image_size), "color": str(cfg.data.color),
            "threshold": result.threshold, "threshold_method": str(cfg.eval.threshold),
            "classes": ["no IDC", "IDC"], **provenance()}
    tracker.log_artifact(save_model(model, out / "best_model.keras", meta), "model")
    tracker.register("model")
    plots = [*result.plots, plot_trials(
        [(t.hyperparameters.values, t.score) for t in tuner.oracle.trials.values() if t.score is not None],
        out / "trials.png")]
    curves = Path(tuner.get_trial_dir(trial.trial_id)) / "training_curves.png"
    if curves.exists():  # drawn by whichever process ran the trial
        plots.append(Path(shutil.copy(curves, out / "training_curves.png")))
    for path in plots:
        tracker.log_artifact(path)
    for path in result.maps:
        tracker.log_artifact(path, "maps")
    trials = out / "trials.csv"  # the same table as `python -m histo_exp.trials <tuner folder>`
    trials.write_text(trials_csv(from_tuner_dir(Path(tuner.project_dir))))
    tracker.log_artifact(trials)
    split_csv = out / "split.csv"
    split_csv.write_text(data.split_table())
    tracker.log_artifact(split_csv)
    if data.skipped:
        tracker.log_artifact(data.cache / "skipped.tsv")
    log.info("best trial %s: val_auc=%.4f  [%s]\n%s", trial.trial_id, trial.score,
             format_hparams(trial.hyperparameters.values), result.table)
    return metrics


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the configured experiment and return its headline metrics (none for a worker)."""
    keras.utils.set_random_seed(int(cfg.seed))
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load(cfg.data)
    log.info("data:\n%s", data.summary())
    log.info("keras %s on the %s backend", keras.__version__, keras.backend.backend())
    dist = cfg.tuner.get("distributed")
    with kerastuner_env(dist):
        if role(dist) == "worker":
            return work(cfg, data)
        with search_lock(tuner_folder(cfg.tuner)):
            return lead(cfg, data, out)


def lead(cfg: DictConfig, data: PatchData, out: Path) -> dict[str, float]:
    """One process's search, or a chief's: own the search run, then evaluate the best model."""
    dist = cfg.tuner.get("distributed") or {}
    tracker = instantiate(cfg.logger)
    tuner = build_search(cfg, data, tracker)
    folder = Path(tuner.project_dir)
    tracker.start_search(
        flatten(OmegaConf.to_container(cfg, resolve=True)),
        config_yaml(cfg),
        run_name=f"{cfg.task_name}-{cfg.optimizer.name}",
        tags=provenance(),
        resume=recorded_search_run(folder, tracker.tracking_uri) if tracker.tracking_uri else None,
    )
    if tracker.search_run_id:
        record_search_run(folder, tracker.search_run_id, tracker.tracking_uri, dist.get("session"))
    if role(dist) == "chief":
        log.info("chief: serving the search on %s:%s for workers (tuner folder %s)",
                 os.environ["KERASTUNER_ORACLE_IP"], os.environ["KERASTUNER_ORACLE_PORT"], folder)
    with ending_runs(tracker):
        search(cfg, data, tuner)
        model, trial = best_model(tuner)
        metrics = log_results(cfg, data, model, tuner, trial, tracker, out)
    log.info("outputs: %s (maps in %s)\n%s", out, out / "maps", tracker.describe())
    if data.skipped:
        log.warning("%d files were skipped (listed in %s)", len(data.skipped), data.cache / "skipped.tsv")
    return metrics


def work(cfg: DictConfig, data: PatchData) -> dict[str, float]:
    """A distributed worker: train the trials the chief hands out, under the chief's search run."""
    dist = cfg.tuner.distributed
    tracker: NullTracker = NullTracker()
    uri = cfg.logger.get("tracking_uri")
    if uri:
        # The chief creates the store and the run: open the store only once the run is recorded.
        folder = tuner_folder(cfg.tuner)
        log.info("%s: waiting for the chief's search run in %s", os.environ["KERASTUNER_TUNER_ID"], folder)
        store = functools.cache(lambda: instantiate(cfg.logger))
        run_id = wait_for_search_run(folder, uri, lambda run: store().is_running(run), float(dist.timeout_s),
                                     session=dist.get("session"))
        tracker = store()
        tracker.join_search(run_id)
    tuner = build_search(cfg, data, tracker)
    with ending_runs(tracker):  # a worker's open trial only: the search run is the chief's
        search(cfg, data, tuner)
    return {}


@contextlib.contextmanager
def ending_runs(tracker: NullTracker) -> Iterator[None]:
    """End the open runs FINISHED, KILLED (Ctrl-C) or FAILED, whichever way the block ends."""
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end_search(status)
