"""After the search: the final model (refit, ensemble, test-time augmentation) and its validation scores.

Every choice here is made from validation predictions only: the search's out-of-fold predictions
with ``tuner.cv_folds`` > 1, else the validation patients'. The test patients are never looked at.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import keras_tuner as kt
import numpy as np

from histo_exp.data.batches import PatchBatches
from histo_exp.data.dataset import PatchData
from histo_exp.evaluation.evaluate import predict
from histo_exp.evaluation.metrics import Scores
from histo_exp.model.ensemble import average_models, with_tta
from histo_exp.model.hypermodel import balanced_weights
from histo_exp.model.stop_check import StopCheck
from histo_exp.settings import Eval, Trainer
from histo_exp.tuning.failures import is_scored, search_failed
from histo_exp.tuning.fold_files import fold_checkpoint, read_fold_results
from histo_exp.tuning.trials import format_hparams

log = logging.getLogger(__name__)


@dataclass
class FinalModel:
    """The model to save, the validation scores its threshold comes from, and the model the test scores."""

    model: keras.Model
    val: Scores
    test_model: keras.Model | None  # None: no patient outside the kept model's training is left to test
    trials: list[kt.engine.trial.Trial]
    tta: bool
    description: str  # what was kept and which model the test metrics belong to


def best_trials(tuner: kt.Tuner, n: int) -> list[kt.engine.trial.Trial]:
    """The ``n`` best scored trials, best first; ``SearchFailed`` when no trial was scored."""
    best = [t for t in tuner.oracle.get_best_trials(max(n, 1)) if is_scored(t)]
    if not best:
        raise search_failed(tuner.oracle)
    return best


def search_models(tuner: kt.Tuner, trial: kt.engine.trial.Trial, folds: Sequence[np.ndarray],
                  val_rows: np.ndarray) -> list[tuple[keras.Model, np.ndarray]]:
    """A trial's trained models with the rows each one validated on: one per patient fold, or the one."""
    with warnings.catch_warnings():  # reloading weights only: the optimizer state is not needed
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        if not folds:
            return [(tuner.load_model(trial), val_rows)]
        out = []
        for k, rows in enumerate(folds):
            model = tuner.hypermodel.build(trial.hyperparameters)
            model.load_weights(fold_checkpoint(tuner.get_trial_dir(trial.trial_id), k))
            out.append((model, rows))
        return out


def out_of_fold(data: PatchData, members: Sequence[Sequence[tuple[keras.Model, np.ndarray]]],
                batch_size: int, tta: bool) -> Scores:
    """Each validation row's probabilities (the IDC column's for 2 classes, every class's for more) from the models
    that never trained on it, averaged over trials."""
    rows = np.unique(np.concatenate([r for _, r in members[0]]))
    classes = len(data.classes)
    total = np.zeros(rows.size if classes == 2 else (rows.size, classes))
    for trial_models in members:
        for model, val in trial_models:
            scored = predict(with_tta(model) if tta else model, PatchBatches(data.images, data.labels, val, batch_size))
            total[np.searchsorted(rows, val)] += scored.y_prob
    return Scores(data.labels[rows].astype(int), total / len(members), data.patients[rows])


def refit_rows(data: PatchData, refit: str) -> np.ndarray:
    """The rows a refit trains on: every non-test patient, or every patient."""
    parts = [data.split.train, data.split.val] + ([data.split.test] if refit == "all" else [])
    return np.sort(np.concatenate(parts))


def refit_epochs(tuner: kt.Tuner, trial: kt.engine.trial.Trial, fallback: int) -> int:
    """The search's best epoch for this trial, averaged over its folds."""
    epochs = [r["best_epoch"] for r in read_fold_results(tuner.get_trial_dir(trial.trial_id))]
    return max(1, round(float(np.mean(epochs)))) if epochs else fallback


def refit_model(tuner: kt.Tuner, trial: kt.engine.trial.Trial, data: PatchData, rows: np.ndarray,
                trainer: Trainer, seed: int) -> keras.Model:
    """Train the trial's hyperparameters afresh on ``rows`` for the epochs the search found best."""
    hypermodel = tuner.hypermodel
    epochs = refit_epochs(tuner, trial, trainer.epochs)
    patients = np.unique(data.patients[rows]).size
    log.info("refit trial %s on %d patches of %d patients for %d epochs  [%s]", trial.trial_id, rows.size,
             patients, epochs, format_hparams(trial.hyperparameters.values))
    weights = balanced_weights(data.labels[rows], len(data.classes)) if hypermodel.class_weight else None
    model = hypermodel.build(trial.hyperparameters)
    model.fit(PatchBatches(data.images, data.labels, rows, trainer.batch_size, shuffle=True, seed=seed,
                           workers=trainer.loader_workers),
              epochs=epochs, class_weight=weights, verbose=trainer.verbose, callbacks=[StopCheck()],
              steps_per_epoch=hypermodel.steps_per_epoch)
    return model


def one_model(models: Sequence[keras.Model], tta: bool) -> keras.Model:
    """The members averaged into one model (itself when alone), with test-time augmentation if chosen."""
    model = models[0] if len(models) == 1 else average_models(models)
    return with_tta(model) if tta else model


def final_model(tuner: kt.Tuner, data: PatchData, folds: Sequence[np.ndarray], evaluation: Eval,
                trainer: Trainer, seed: int) -> FinalModel:
    """Choose and build the model the run ends with, from validation predictions only."""
    refit = trainer.refit
    batch_size = evaluation.batch_size  # inference only: larger than training's
    trials = best_trials(tuner, evaluation.ensemble)
    members = [search_models(tuner, t, folds, data.split.val) for t in trials]
    tta = evaluation.tta
    val = out_of_fold(data, members, batch_size, tta=bool(tta) and tta != "auto")
    if tta == "auto":
        with_aug = out_of_fold(data, members, batch_size, tta=True)
        tta = with_aug.auc > val.auc
        log.info("eval.tta=auto: validation AUC %.4f with test-time augmentation, %.4f without: %s",
                 with_aug.auc, val.auc, "on" if tta else "off")
        val = with_aug if tta else val
    searched = one_model([m for trial_models in members for m, _ in trial_models], bool(tta))
    trial_ids = ", ".join(t.trial_id for t in trials)
    which = f"trial {trial_ids}" if len(trials) == 1 else f"the {len(trials)} best trials ({trial_ids}) averaged"
    augmented = ", with test-time augmentation (8 flips/turns)" if tta else ""
    has_test = data.split.test.size > 0
    if refit == "none":
        models = f"its {len(folds)} patient-fold models averaged" if folds else "its model"
        return FinalModel(searched, val, searched if has_test else None, trials, bool(tta),
                          f"kept: {which}, {models}{augmented}; test metrics: that model")
    rows = refit_rows(data, refit)
    refit_models = [refit_model(tuner, t, data, rows, trainer, seed) for t in trials]
    refit_final = one_model(refit_models, bool(tta))
    if refit == "trainval":
        return FinalModel(refit_final, val, refit_final if has_test else None, trials, bool(tta),
                          f"kept: {which}, refit on every non-test patient{augmented}; test metrics: that model")
    return FinalModel(refit_final, val, searched if has_test else None, trials, bool(tta),
                      f"kept: {which}, refit on every patient, test ones included{augmented}; test metrics: the "
                      "search's models before that refit (the kept model has seen the test patients)")
