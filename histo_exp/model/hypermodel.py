"""KerasTuner HyperModel: a model builder and an optimizer, each with a search space, become one trial.

Both come as ``functools.partial`` objects whose keywords may hold search-space specs (the
runner makes them from the ``model`` and ``optimizer`` groups with Hydra's ``_partial_``), so a
new architecture is one YAML file and one function taking ``input_shape`` and its keywords.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from histo_exp.errors import UsageError
from histo_exp.model.augment import input_layers
from histo_exp.model.cnn import auc_metric, loss_for, max_blocks
from histo_exp.model.stop_check import StopCheck
from histo_exp.space import sample, to_plain

log = logging.getLogger(__name__)


def balanced_weights(labels: np.ndarray, classes: int = 2) -> dict[int, float]:
    """scikit-learn's balanced class weights (inverse class frequency; they average to 1 per patch)."""
    weights = compute_class_weight("balanced", classes=np.arange(classes), y=labels)
    return {k: float(w) for k, w in enumerate(weights)}


def bound_blocks(model_cfg: Mapping, image_size: int) -> dict:
    """Cap the ``blocks`` range so the pooled side never reaches 0 at this image size."""
    model = dict(to_plain(model_cfg))
    limit = max_blocks(image_size)
    blocks = model.get("blocks")
    if isinstance(blocks, Mapping) and "max" in blocks and blocks["max"] > limit:
        if blocks["min"] > limit:
            raise UsageError(
                f"model.blocks min={blocks['min']} does not fit {image_size}px images "
                f"(at most {limit} blocks)"
            )
        log.warning("model.blocks max %s capped to %s for %spx images", blocks["max"], limit,
                    image_size)
        model["blocks"] = {**blocks, "max": limit}
    elif isinstance(blocks, Mapping) and "choice" in blocks:
        fitting = [b for b in blocks["choice"] if b <= limit]
        if not fitting:
            raise UsageError(f"no model.blocks choice fits {image_size}px images (max {limit})")
        model["blocks"] = {**blocks, "choice": fitting}
    return model


def lr_factor(scaling: str, batch_size: int, base_batch: int) -> float:
    """How much a learning rate chosen for ``base_batch`` grows at ``batch_size``: ``none`` (1),
    ``linear`` (Goyal et al. 2017, for SGD) or ``sqrt`` (the usual rule for Adam and RMSprop)."""
    ratio = batch_size / base_batch
    factors = {"none": 1.0, "linear": ratio, "sqrt": ratio ** 0.5}
    if scaling not in factors:
        raise UsageError(f"trainer.lr_scaling must be one of {', '.join(factors)}; got {scaling!r}")
    return factors[scaling]


class SpaceHyperModel(kt.HyperModel):
    """Builds and compiles one trial's model from the sampled builder and optimizer, and fits it."""

    def __init__(
        self,
        model: functools.partial,
        optimizer: functools.partial,
        input_shape: Sequence[int],
        epochs: int = 3,
        early_stopping_patience: int | None = None,
        steps_per_epoch: int | None = None,
        class_weight: Mapping[int, float] | None = None,
        precision: str = "float32",
        augment: Mapping | None = None,
        gray: bool = False,
        normalize: str = "none",
        seed: int | None = None,
        steps_per_execution: int = 1,
        lr_scaling: str = "none",
        batch_size: int = 64,
        lr_base_batch: int = 64,
        classes: int = 2,
    ) -> None:
        super().__init__(name=str(model.keywords.get("name", model.func.__name__)))
        self.build_model: Callable[..., keras.Model] = model.func
        self.model_space = bound_blocks(model.keywords, min(input_shape[:2]))
        self.make_optimizer: Callable[..., keras.optimizers.Optimizer] = optimizer.func
        self.optimizer_space = dict(to_plain(optimizer.keywords))
        self.input_shape = tuple(input_shape)
        self.epochs = epochs
        self.early_stopping_patience = early_stopping_patience
        self.steps_per_epoch = steps_per_epoch
        self.class_weight = dict(class_weight) if class_weight else None
        self.precision = precision
        self.augment_space = dict(to_plain(augment or {}))
        self.gray = gray
        self.normalize = normalize
        self.seed = seed
        self.steps_per_execution = int(steps_per_execution)
        self.lr_factor = lr_factor(lr_scaling, batch_size, lr_base_batch)
        self.classes = int(classes)  # the builder is told only when not 2, so a 2-class builder needs no such keyword

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        """The sampled network behind the input layers: training-only augmentation, then gray if asked.

        The saved model takes the cached RGB patches either way, so prediction needs nothing new.
        """
        augment = {"flip": False, "rotate90": False, **sample(hp, self.augment_space)}  # unset: off
        front = input_layers(**augment, gray=self.gray, normalize=self.normalize, seed=self.seed)
        channels = 1 if self.gray else self.input_shape[-1]
        head = {"classes": self.classes} if self.classes != 2 else {}
        net = self.build_model((*self.input_shape[:-1], channels), **sample(hp, self.model_space),
                               dtype=self.precision, **head)
        model = keras.Sequential([keras.Input(self.input_shape), *front, net], name=net.name) if front else net
        settings = sample(hp, self.optimizer_space)
        if "learning_rate" in settings and self.lr_factor != 1:  # the space is written for lr_base_batch
            settings["learning_rate"] = float(settings["learning_rate"]) * self.lr_factor
        model.compile(
            optimizer=self.make_optimizer(**settings),
            loss=loss_for(self.classes),
            metrics=[auc_metric(self.classes)],
            steps_per_execution=self.steps_per_execution,
        )
        return model

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args: Any, **kwargs: Any):
        """Train one trial; a NaN or infinite loss stops it at that batch (the tuner then fails the trial)."""
        kwargs.setdefault("epochs", self.epochs)
        kwargs.setdefault("steps_per_epoch", self.steps_per_epoch)
        kwargs.setdefault("class_weight", self.class_weight)
        callbacks = [*kwargs.get("callbacks", []), keras.callbacks.TerminateOnNaN(), StopCheck()]
        if self.early_stopping_patience:
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_auc", mode="max",
                                                           patience=self.early_stopping_patience))
        return model.fit(*args, **{**kwargs, "callbacks": callbacks})
