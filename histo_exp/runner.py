"""One experiment, top to bottom: data -> tuner -> search -> best model on test patients -> tracker."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import warnings
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from sklearn.exceptions import ConvergenceWarning

from histo_exp import __version__
from histo_exp.config import config_yaml
from histo_exp.data.batches import PatchBatches, split_batches
from histo_exp.data.device import on_device
from histo_exp.data.dataset import PatchData, load
from histo_exp.data.split import patient_folds
from histo_exp.evaluation.evaluate import Evaluation, evaluate
from histo_exp.evaluation.plots import plot_trials
from histo_exp.model.hypermodel import SpaceHyperModel, balanced_weights
from histo_exp.model.saving import save_model
from histo_exp.tracking import ERROR, KEPT, NullTracker, Tracker, check_server, ending_runs, flatten
from histo_exp.trials import from_tuner_dir, trials_csv
from histo_exp.tuning.failures import SearchFailed, is_scored, stopped_by_failures
from histo_exp.tuning.folder import (note_output, noted_outputs, record_search_run, recorded_search_run,
                                     search_lock, tuner_folder, wait_for_search_run)
from histo_exp.tuning.keep import Kept, keep
from histo_exp.tuning.roles import kerastuner_env, role
from histo_exp.tuning.tuners import format_hparams, tuner_from_config

log = logging.getLogger(__name__)
# Each trial, fold and ensemble member is a new model, so TensorFlow traces new functions: expected, not a problem.
logging.getLogger("tensorflow").addFilter(lambda record: "tf.function retracing" not in record.getMessage())


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the configured experiment and return its headline metrics (none for a worker)."""
    keras.utils.set_random_seed(int(cfg.seed))
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_server(cfg.logger.get("tracking_uri"))  # seconds; building a model first takes longer
    check_config(cfg)
    data = load(cfg.data)
    log.info("data:\n%s", data.summary())
    data = dataclasses.replace(data, images=on_device(data.images, cfg.trainer.get("data_on_device", "auto")))
    log.info("keras %s on the %s backend", keras.__version__, keras.backend.backend())
    with kerastuner_env(cfg.tuner.get("distributed")):
        note_output(tuner_folder(cfg.tuner), out)
        if role(cfg.tuner.get("distributed")) == "worker":
            return train_trials(cfg, data)
        with search_lock(tuner_folder(cfg.tuner)):
            tracker: Tracker = instantiate(cfg.logger)
            tuner = build_tuner(cfg, data, tracker)
            open_search_run(cfg, tracker, Path(tuner.project_dir))
            with ending_runs(tracker):
                tracker.log_dataset(str(cfg.data.name), data.fingerprint, str(data.root), data.profile())
                search(cfg, data, tuner)
                kept = keep_model(cfg, data, tuner, tracker)
                log.info(kept.description)
                result = evaluate(kept.test_model, kept.val, data, cfg.eval, int(cfg.eval.batch_size), out,
                                  int(cfg.seed))
                metrics = log_results(cfg, data, kept, tuner, result, tracker, out)
    log.info("outputs: %s\n%s", out, tracker.describe())
    if data.skipped:
        log.warning("%d files were skipped (listed in %s)", len(data.skipped), data.cache / "skipped.tsv")
    return metrics


def keep_model(cfg: DictConfig, data: PatchData, tuner: kt.Tuner, tracker: Tracker) -> Kept:
    """The model the search keeps; a search none of whose trials succeeded says why on its run, and stops."""
    try:
        return keep(tuner, data, [val.indices for _, val in tuner.folds], cfg.eval, cfg.trainer,
                    str(cfg.trainer.get("refit", "none")), int(cfg.seed))
    except SearchFailed as failed:
        tracker.set_tags({ERROR: str(failed)})
        raise


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
    return balanced_weights(data.labels[data.split.train])


def cv_folds(cfg: DictConfig, data: PatchData) -> list[tuple[PatchBatches, PatchBatches]]:
    """``tuner.cv_folds`` patient folds of the non-test patients as (train, validation) batches; [] for one split.

    ``auto`` cross-validates when the non-test patients are few (``tuner.cv_auto_max_patients``),
    where a single validation split of a couple of patients would steer the search by their colour.
    """
    rows = np.sort(np.concatenate([data.split.train, data.split.val]))
    k = cfg.tuner.get("cv_folds", 1)
    if k == "auto":
        few = np.unique(data.patients[rows]).size <= int(cfg.tuner.get("cv_auto_max_patients", 40))
        k = int(cfg.tuner.get("cv_auto_folds", 3)) if few else 1
    folds = patient_folds(data.labels, data.patients, rows, int(k), int(cfg.seed))
    if folds:
        log.info("tuner.cv_folds: each trial trains on %d patient folds of %d patients:\n%s", len(folds),
                 np.unique(data.patients[rows]).size, "\n".join(
                     f"  fold {i}: validation patients {', '.join(map(str, np.unique(data.patients[v])))}"
                     for i, (_, v) in enumerate(folds)))
    size, workers = int(cfg.trainer.batch_size), int(cfg.trainer.get("loader_workers", 1))
    return [(PatchBatches(data.images, data.labels, train, size, shuffle=True, seed=int(cfg.seed), workers=workers),
             PatchBatches(data.images, data.labels, val, size, workers=workers)) for train, val in folds]


def hypermodel_from_config(cfg: DictConfig, input_shape: tuple[int, int, int],
                           class_weight: dict[int, float] | None = None) -> SpaceHyperModel:
    """The model, optimizer and augmentation spaces and the training settings, as one hypermodel."""
    trainer = cfg.trainer
    return SpaceHyperModel(
        instantiate(cfg.model, _partial_=True, _convert_="all"),
        instantiate(cfg.optimizer, _partial_=True, _convert_="all"),
        input_shape, epochs=int(trainer.epochs),
        early_stopping_patience=trainer.get("early_stopping_patience"),
        steps_per_epoch=trainer.get("steps_per_epoch"), class_weight=class_weight,
        precision=str(trainer.get("precision", "float32")),
        augment=cfg.data.get("augment") or {}, gray=cfg.data.color == "gray",
        normalize=str(cfg.data.get("normalize", "none")), seed=int(cfg.seed),
        steps_per_execution=int(trainer.get("steps_per_execution", 1)),
        lr_scaling=str(trainer.get("lr_scaling", "none")), batch_size=int(trainer.batch_size),
        lr_base_batch=int(trainer.get("lr_base_batch", 64)),
    )


def check_config(cfg: DictConfig) -> None:
    """Build one model of the search spaces before any data is decoded, so that a bad spec, a network
    that does not fit ``data.image_size`` or an unknown optimizer argument fails in seconds."""
    size = int(cfg.data.image_size)
    hypermodel_from_config(cfg, (size, size, 3)).build(kt.HyperParameters())  # the cache is RGB always
    keras.backend.clear_session()


def build_tuner(cfg: DictConfig, data: PatchData, tracker: Tracker) -> kt.Tuner:
    """The configured KerasTuner tuner over the model and optimizer spaces (resumed if its folder is there)."""
    weights = class_weight(data, cfg.trainer.get("class_weight"))
    if weights:
        log.info("class weights (trainer.class_weight=auto): %s",
                 ", ".join(f"{c}: {w:.3f}" for c, w in weights.items()))
    hypermodel = hypermodel_from_config(cfg, data.input_shape, weights)
    return tuner_from_config(cfg.tuner, hypermodel, tracker, cv_folds(cfg, data))


def open_search_run(cfg: DictConfig, tracker: Tracker, folder: Path) -> None:
    """Start the search run, or reopen the one this tuner folder logged to, and record it there."""
    uri = tracker.tracking_uri
    tracker.send_unsent(noted_outputs(folder))  # earlier launches' trials first: this one's resume counts them
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
    """Run the tuner's trials (a chief serves the oracle instead, until its workers are done).

    KerasTuner raises when ``tuner.max_consecutive_failed_trials`` trials in a row failed: the
    search ends there, and what it found so far is kept (or ``keep`` says that nothing was).
    """
    trainer = cfg.trainer
    with warnings.catch_warnings():  # the Gaussian process's fit notes, once per trial: noise here
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        try:
            tuner.search(
                split_batches(data, "train", trainer.batch_size, cfg.seed, trainer.get("loader_workers", 1)),
                validation_data=split_batches(data, "val", trainer.batch_size, cfg.seed,
                                              trainer.get("loader_workers", 1)),
                verbose=int(trainer.verbose),
            )
        except RuntimeError:
            if not stopped_by_failures(tuner.oracle):
                raise
            log.warning("the search stopped early at tuner.max_consecutive_failed_trials=%d failed trials in a row",
                        tuner.oracle.max_consecutive_failed_trials)


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


def log_results(cfg: DictConfig, data: PatchData, kept: Kept, tuner: kt.Tuner, result: Evaluation,
                tracker: Tracker, out: Path) -> dict[str, float]:
    """Log the evaluation's metrics, plots and maps, the kept model, the trials and the split."""
    trial = kept.trials[0]
    metrics = {"best_val_auc": float(trial.score), **result.metrics}
    tracker.log_metrics(metrics)
    tracker.set_tags({KEPT: kept.description})
    meta = {"image_size": int(cfg.data.image_size), "color": "rgb" if data.input_shape[-1] == 3 else "gray",
            "network_color": str(cfg.data.color), "threshold": result.threshold,
            "threshold_method": str(cfg.eval.threshold), "threshold_from": "validation patients' predictions"
            + (" (out of fold)" if tuner.folds else ""), "kept": kept.description, "tta": kept.tta,
            "trials": [t.trial_id for t in kept.trials], "classes": ["no IDC", "IDC"], **provenance()}
    saved = save_model(kept.model, out / "best_model.keras", meta)
    tracker.log_artifact(saved, "model")
    tracker.log_model(saved, data.input_shape)
    tracker.register(float(trial.score), data.fingerprint)
    plots = [*result.plots, plot_trials(
        [(t.hyperparameters.values, t.score) for t in tuner.oracle.trials.values() if is_scored(t)],
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
    log.info("best trial %s: %s=%.4f  [%s]\n%s", trial.trial_id, tuner.oracle.objective.name, trial.score,
             format_hparams(trial.hyperparameters.values), result.table)
    return metrics
