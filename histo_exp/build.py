"""From settings to the objects an experiment runs: the hypermodel, the patient folds, the tuner, the tracker.

Each is built with ``hydra.utils.instantiate`` from the groups whose option names its class
(``model``, ``optimizer``, ``tuner``, ``logger``); the typed settings give everything else.
"""

from __future__ import annotations

import logging

import keras
import keras_tuner as kt
import numpy as np
from hydra.utils import instantiate

from histo_exp.data.batches import PatchBatches
from histo_exp.data.dataset import PatchData
from histo_exp.data.split import patient_folds
from histo_exp.model.hypermodel import SpaceHyperModel, balanced_weights
from histo_exp.settings import Settings, tuner_arguments
from histo_exp.tracking import Tracker
from histo_exp.tuning.search_folder import SearchFolder

log = logging.getLogger(__name__)


def hypermodel(settings: Settings, input_shape: tuple[int, int, int],
               class_weight: dict[int, float] | None = None, classes: int = 2) -> SpaceHyperModel:
    """The model, optimizer and augmentation spaces and the training settings, as one hypermodel
    (its head and loss follow the number of ``classes``)."""
    trainer, data = settings.trainer, settings.data
    return SpaceHyperModel(
        instantiate(settings.model, _partial_=True, _convert_="all"),
        instantiate(settings.optimizer, _partial_=True, _convert_="all"),
        input_shape, epochs=trainer.epochs, early_stopping_patience=trainer.early_stopping_patience,
        steps_per_epoch=trainer.steps_per_epoch, class_weight=class_weight, precision=trainer.precision,
        augment=vars(data.augment), gray=data.color == "gray", normalize=data.normalize, seed=settings.seed,
        steps_per_execution=trainer.steps_per_execution, lr_scaling=trainer.lr_scaling,
        batch_size=trainer.batch_size, lr_base_batch=trainer.lr_base_batch, classes=classes,
    )


def check_model(settings: Settings) -> None:
    """Build one model of the search spaces before any data is decoded, so that a network that does
    not fit ``data.image_size`` or an unknown builder or optimizer argument fails in seconds."""
    size = settings.data.image_size
    hypermodel(settings, (size, size, 3)).build(kt.HyperParameters())  # the cache is RGB always
    keras.backend.clear_session()


def class_weight(data: PatchData, mode: str | None) -> dict[int, float] | None:
    """``auto``: scikit-learn's balanced weights on the training split (they average to 1)."""
    if mode in (None, "none"):
        return None
    return balanced_weights(data.labels[data.split.train], len(data.classes))


def fold_count(settings: Settings, patients: int) -> int:
    """``tuner.cv_folds``; ``auto`` cross-validates when the non-test patients are few
    (``tuner.cv_auto_max_patients``), where one validation split of a couple of patients would
    steer the search by their colour."""
    tuner = settings.tuner
    if tuner.cv_folds != "auto":
        return int(tuner.cv_folds)
    return tuner.cv_auto_folds if patients <= tuner.cv_auto_max_patients else 1


def cv_folds(settings: Settings, data: PatchData) -> list[tuple[PatchBatches, PatchBatches]]:
    """Patient folds of the non-test patients as (train, validation) batches; [] for the one split."""
    rows = np.sort(np.concatenate([data.split.train, data.split.val]))
    patients = np.unique(data.patients[rows])
    folds = patient_folds(data.labels, data.groups, rows, fold_count(settings, patients.size), settings.seed,
                          classes=data.classes, group=data.group_by)
    if folds:
        log.info("tuner.cv_folds: each trial trains on %d %s folds of %d patients:\n%s", len(folds), data.group_by,
                 patients.size, "\n".join(
                     f"  fold {i}: validation {data.group_by}s {', '.join(map(str, np.unique(data.groups[v])))}"
                     for i, (_, v) in enumerate(folds)))
    size, workers = settings.trainer.batch_size, settings.trainer.loader_workers
    return [(PatchBatches(data.images, data.labels, train, size, shuffle=True, seed=settings.seed, workers=workers),
             PatchBatches(data.images, data.labels, val, size, workers=workers)) for train, val in folds]


def tuner(settings: Settings, data: PatchData, tracker: Tracker, folder: SearchFolder) -> kt.Tuner:
    """The configured KerasTuner tuner over the model and optimizer spaces, resumed if its folder holds
    a search (``tuner.overwrite=true`` starts over). Build it inside ``folder.entered()``: KerasTuner
    reads its role from the environment."""
    weights = class_weight(data, settings.trainer.class_weight)
    if weights:
        log.info("class weights (trainer.class_weight=auto): %s",
                 ", ".join(f"{c}: {w:.3f}" for c, w in weights.items()))
    folder.ready(settings.tuner.overwrite)
    args = tuner_arguments(settings.tuner) | ({"overwrite": False} if folder.role == "worker" else {})
    return instantiate(args, hypermodel=hypermodel(settings, data.input_shape, weights, len(data.classes)),
                       tracker=tracker,
                       folds=cv_folds(settings, data), role=folder.role, plots=settings.eval.plots)


def tracker(settings: Settings) -> Tracker:
    """The configured tracker (``logger``): MLflow, or none."""
    return instantiate(settings.logger)
