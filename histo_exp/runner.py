"""One experiment, top to bottom: data -> tuner -> search -> best model on test patients -> tracker."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.class_weight import compute_class_weight

from histo_exp import __version__
from histo_exp.config import config_yaml
from histo_exp.data.batches import Augment, split_batches
from histo_exp.data.dataset import PatchData, load
from histo_exp.evaluation.evaluate import Evaluation, evaluate
from histo_exp.evaluation.plots import plot_trials
from histo_exp.model.hypermodel import SpaceHyperModel
from histo_exp.model.saving import save_model
from histo_exp.tracking import NullTracker, Tracker, ending_runs, flatten
from histo_exp.trials import from_tuner_dir, trials_csv
from histo_exp.tuning.folder import (record_search_run, recorded_search_run, search_lock, tuner_folder,
                                     wait_for_search_run)
from histo_exp.tuning.roles import kerastuner_env, role
from histo_exp.tuning.tuners import format_hparams, tuner_from_config

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the configured experiment and return its headline metrics (none for a worker)."""
    keras.utils.set_random_seed(int(cfg.seed))
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load(cfg.data)
    log.info("data:\n%s", data.summary())
    log.info("keras %s on the %s backend", keras.__version__, keras.backend.backend())
    with kerastuner_env(cfg.tuner.get("distributed")):
        if role(cfg.tuner.get("distributed")) == "worker":
            return train_trials(cfg, data)
        with search_lock(tuner_folder(cfg.tuner)):
            tracker: Tracker = instantiate(cfg.logger)
            tuner = build_tuner(cfg, data, tracker)
            open_search_run(cfg, tracker, Path(tuner.project_dir))
            with ending_runs(tracker):
                tracker.log_dataset(str(cfg.data.name), data.fingerprint, str(data.root), data.profile())
                search(cfg, data, tuner)
                model, trial = best_model(tuner)
                result = evaluate(model, data, cfg.eval, int(cfg.trainer.batch_size), out, int(cfg.seed))
                metrics = log_results(cfg, data, model, tuner, trial, result, tracker, out)
    log.info("outputs: %s\n%s", out, tracker.describe())
    if data.skipped:
        log.warning("%d files were skipped (listed in %s)", len(data.skipped), data.cache / "skipped.tsv")
    return metrics


def train_trials(cfg: DictConfig, data: PatchData) -> dict[str, float]:
    """A distributed worker: train the trials the chief hands out, under the chief's search run."""
    tracker: Tracker = NullTracker()
    uri = cfg.logger.get("tracking_uri")
    if uri:
        # The chief creates the store and the run: open the store only once the run is recorded.
        folder = tuner_folder(cfg.tuner)
        log.info("%s: waiting for the chief's search run in %s", os.environ["KERASTUNER_TUNER_ID"], folder)
        store = functools.cache(lambda: instantiate(cfg.logger))
        dist = cfg.tuner.distributed
        run_id = wait_for_search_run(folder, uri, lambda run: store().is_running(run), float(dist.timeout_s),
                                     session=dist.get("session"))
        tracker = store()
        tracker.join_search(run_id)
    tuner = build_tuner(cfg, data, tracker)
    with ending_runs(tracker):  # a worker's open trial only: the search run is the chief's
        search(cfg, data, tuner)
    return {}


def class_weight(data: PatchData, mode: str | None) -> dict[int, float] | None:
    """``auto``: scikit-learn's balanced weights on the training split (they average to 1)."""
    if mode in (None, "none"):
        return None
    if mode != "auto":
        raise ValueError(f"trainer.class_weight must be auto or none; got {mode!r}")
    weights = compute_class_weight("balanced", classes=np.array([0, 1]), y=data.labels[data.split.train])
    return {0: float(weights[0]), 1: float(weights[1])}


def build_tuner(cfg: DictConfig, data: PatchData, tracker: Tracker) -> kt.Tuner:
    """The configured KerasTuner tuner over the model and optimizer spaces (resumed if its folder is there)."""
    trainer = cfg.trainer
    weights = class_weight(data, trainer.get("class_weight"))
    if weights:
        log.info("class weights (trainer.class_weight=auto): %s",
                 ", ".join(f"{c}: {w:.3f}" for c, w in weights.items()))
    hypermodel = SpaceHyperModel(
        instantiate(cfg.model, _partial_=True, _convert_="all"),
        instantiate(cfg.optimizer, _partial_=True, _convert_="all"),
        data.input_shape, epochs=int(trainer.epochs),
        early_stopping_patience=trainer.get("early_stopping_patience"),
        steps_per_epoch=trainer.get("steps_per_epoch"), class_weight=weights,
        precision=str(trainer.get("precision", "float32")),
    )
    return tuner_from_config(cfg.tuner, hypermodel, tracker)


def open_search_run(cfg: DictConfig, tracker: Tracker, folder: Path) -> None:
    """Start the search run, or reopen the one this tuner folder logged to, and record it there."""
    uri = tracker.tracking_uri
    tracker.start_search(
        flatten(OmegaConf.to_container(cfg, resolve=True)), config_yaml(cfg),
        run_name=f"{cfg.task_name}-{cfg.optimizer.name}", tags=provenance(),
        resume=recorded_search_run(folder, uri) if uri else None,
    )
    if tracker.search_run_id:
        record_search_run(folder, tracker.search_run_id, uri, cfg.tuner.distributed.get("session"))
    if role(cfg.tuner.distributed) == "chief":
        log.info("chief: serving the search on %s:%s for workers (tuner folder %s)",
                 os.environ["KERASTUNER_ORACLE_IP"], os.environ["KERASTUNER_ORACLE_PORT"], folder)


def search(cfg: DictConfig, data: PatchData, tuner: kt.Tuner) -> None:
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


def best_model(tuner: kt.Tuner) -> tuple[keras.Model, kt.engine.trial.Trial]:
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
    from mlflow.utils.git_utils import get_git_commit

    tags = {"histo_exp.version": __version__, "histo_exp.keras_backend": keras.backend.backend(),
            "histo_exp.keras_version": keras.__version__}
    commit = get_git_commit(str(Path(__file__).parent))
    if commit:
        tags["histo_exp.git_commit"] = commit
    return tags


def log_results(cfg: DictConfig, data: PatchData, model: keras.Model, tuner: kt.Tuner, trial: Any,
                result: Evaluation, tracker: Tracker, out: Path) -> dict[str, float]:
    """Log the evaluation's metrics, plots and maps, the model, the trials and the split."""
    metrics = {"best_val_auc": float(trial.score), **result.metrics}
    tracker.log_metrics(metrics)
    meta = {"image_size": int(cfg.data.image_size), "color": str(cfg.data.color),
            "threshold": result.threshold, "threshold_method": str(cfg.eval.threshold),
            "classes": ["no IDC", "IDC"], **provenance()}
    saved = save_model(model, out / "best_model.keras", meta)
    tracker.log_artifact(saved, "model")
    tracker.log_model(saved, data.input_shape)
    tracker.register(float(trial.score), data.fingerprint)
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
    trials = out / "trials.csv"  # the same table as `python -m histo_exp.trials source=<tuner folder>`
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
