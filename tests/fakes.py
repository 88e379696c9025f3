"""Fakes for the tests whose subject is not the search itself: a tracker that records what it is told,
an oracle that hands out hyperparameters from a list, and a hypermodel whose fit replays scripted
epochs through the real callbacks (KerasTuner's checkpoint and trial hooks) without training."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import keras_tuner as kt

from histo_exp.tracking import Tracker


@dataclass
class RecordedTrial:
    trial_id: str
    hparams: dict[str, Any]
    epochs: list[dict[str, float]] = field(default_factory=list)
    status: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


class RecordingTracker(Tracker):
    """Records the trials it is told about, as a store would keep them."""

    def __init__(self) -> None:
        self.trials: list[RecordedTrial] = []
        self.search_tags: dict[str, str] = {}
        self.search_status: str | None = None

    def start_trial(self, trial_id: str, hparams: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> None:
        self.trials.append(RecordedTrial(trial_id, dict(hparams)))

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.trials[-1].epochs.append(dict(metrics))

    def end_trial(self, status: str, metrics: Mapping[str, float], error: str | None = None) -> None:
        self.trials[-1].status, self.trials[-1].metrics, self.trials[-1].error = status, dict(metrics), error

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.search_tags |= dict(tags)

    def end_search(self, status: str, error: str | None = None) -> list[str]:
        self.search_status = status
        if error:
            self.search_tags["histo_exp.error"] = error
        return ["search run"]


class ListOracle(kt.Oracle):
    """Hands out ``values`` in order, then stops: which trial gets what never depends on a seed."""

    def __init__(self, values: Sequence[Mapping[str, Any]], **kwargs: Any) -> None:
        super().__init__(objective=kt.Objective("val_auc", "max"), max_trials=len(values), **kwargs)
        self.values = list(values)

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        index = len(self.trials)
        if index >= len(self.values):
            return {"status": kt.engine.trial.TrialStatus.STOPPED, "values": None}
        return {"status": kt.engine.trial.TrialStatus.RUNNING, "values": dict(self.values[index])}


Epochs = Sequence[Mapping[str, float]]


class ScriptedHyperModel(kt.HyperModel):
    """A one-layer model; ``fit`` calls ``script(hp)`` for the epochs' logs (or its error) and passes each
    epoch through the callbacks KerasTuner gave it, stopping where a callback stops training."""

    def __init__(self, script: Callable[[kt.HyperParameters], Epochs], choices: Sequence[float] = (0.01, 1e6)):
        super().__init__(name="scripted")
        self.script = script
        self.choices = list(choices)
        self.class_weight = None

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        hp.Choice("learning_rate", self.choices)
        return keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args: Any, callbacks: Sequence = (),
            **kwargs: Any) -> keras.callbacks.History:
        epochs = self.script(hp)
        history = keras.callbacks.History()
        hooks = keras.callbacks.CallbackList([*callbacks, history], model=model)
        model.stop_training = False  # as fit sets it
        hooks.on_train_begin()
        for epoch, logs in enumerate(epochs):
            hooks.on_epoch_begin(epoch)
            hooks.on_epoch_end(epoch, dict(logs))
            if model.stop_training:
                break
        hooks.on_train_end()
        return history
