"""KerasTuner's tuners, each reporting every trial to a tracker and training it on each patient fold."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras_tuner as kt
from keras_tuner.src import config as kt_config

from histo_exp.errors import UsageError
from histo_exp.evaluation.plots import plot_history
from histo_exp.log_file import file_log
from histo_exp.settings import HYPERBAND_WITH_FOLDS
from histo_exp.signals import check
from histo_exp.tracking import NullTracker, Tracker
from histo_exp.tuning.failures import (
    fail_if_non_finite,
    failure_reason,
    is_scored,
    non_finite,
    stopped_by_failures,
    trial_error,
)
from histo_exp.tuning.fold_files import fold_checkpoint, read_fold_results, write_fold_results
from histo_exp.tuning.oracle import ORACLE_ARGS, BayesianOracle
from histo_exp.tuning.search_folder import Role
from histo_exp.tuning.trials import format_hparams

log = logging.getLogger(__name__)
kt_config.DEBUG = False  # else KerasTuner prints each failed trial's traceback: ``report_trial`` says it in one line

STATUS = {"COMPLETED": "FINISHED", "FAILED": "FAILED", "INVALID": "FAILED", "STOPPED": "KILLED"}


class TrackedTuner:
    """Mixin for a KerasTuner tuner: one tracker trial per KerasTuner trial, and a log line.

    Uses KerasTuner's own trial hooks, so failed trials (which KerasTuner catches and marks
    FAILED or INVALID) are recorded and the search goes on. A NaN or infinite loss or metric
    fails its trial (``FailedTrialError``) rather than scoring it.
    """

    def __init__(self, *args: Any, tracker: Tracker | None = None, folds: Sequence[tuple[Any, Any]] = (),
                 role: Role = "lone", plots: bool = True, **kwargs: Any) -> None:
        self._track(tracker, folds, role, plots)
        super().__init__(*args, **kwargs)

    def _track(self, tracker: Tracker | None, folds: Sequence[tuple[Any, Any]], role: Role, plots: bool) -> None:
        if folds and isinstance(self, kt.Hyperband):
            raise UsageError(HYPERBAND_WITH_FOLDS)
        self.tracker = tracker or NullTracker()
        self.role = role
        self.plots = plots  # each trial's training curves
        self.folds = list(folds)  # (train, validation) batches per patient fold; none: the one split
        self.fold = 0
        self.histories: list[dict[str, list[float]]] = []  # the running trial's metrics, per fold and epoch

    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> list:
        """KerasTuner's trial (best epoch checkpointed), once per patient fold with ``folds``.

        KerasTuner averages the best epoch's objective over the returned histories, so a
        cross-validated trial scores the mean validation AUC of its folds. Each fold's weights
        are kept beside KerasTuner's checkpoint (which holds the last fold's).
        """
        val = kwargs.pop("validation_data", None)
        folds = self.folds or [(args[0] if args else kwargs.pop("x"), val)]
        histories = []
        for self.fold, (train, val) in enumerate(folds):
            self.histories.append({})
            histories += super().run_trial(trial, train, *args[1:], validation_data=val, **kwargs)
            fail_if_non_finite(self.histories[-1], self.fold, len(self.folds))
            if self.folds:
                best = max(self.histories[-1].get(self.oracle.objective.name) or [float("nan")])
                log.info("trial %s fold %d of %d: %s=%.4f", trial.trial_id, self.fold + 1, len(folds),
                         self.oracle.objective.name, best)
                shutil.copy(self._get_checkpoint_fname(trial.trial_id),
                            fold_checkpoint(self.get_trial_dir(trial.trial_id), self.fold))
        write_fold_results(Path(self.get_trial_dir(trial.trial_id)), self.histories,
                           self.oracle.objective.name)
        return histories

    def search(self, *fit_args: Any, **fit_kwargs: Any) -> None:
        if self.role == "chief":  # serves the oracle only; the workers print the trial lines
            self.oracle.verbose = 0
            fit_kwargs.pop("verbose", None)
        super().search(*fit_args, **fit_kwargs)

    def on_search_begin(self) -> None:
        super().on_search_begin()
        self.oracle.verbose = 0  # our own trial lines replace KerasTuner's tables; fit keeps its bar

    def on_trial_begin(self, trial: kt.engine.trial.Trial) -> None:
        check()  # a stop whose raise was lost between trials ends the search before a new run is made
        super().on_trial_begin(trial)
        self.histories = []
        limit = self.oracle.max_trials
        log.info("trial %s%s", trial.trial_id, f" of at most {limit}" if limit else "")
        self.tracker.start_trial(trial.trial_id, trial.hyperparameters.values,
                                 tags={"histo_exp.tuner_id": self.tuner_id})

    def on_epoch_end(self, trial, model, epoch, logs=None) -> None:
        super().on_epoch_end(trial, model, epoch, logs=logs)
        prefix = f"fold{self.fold}/" if self.folds else ""
        self.tracker.log_epoch(epoch, {prefix + name: value for name, value in (logs or {}).items()})
        for name, value in (logs or {}).items():
            self.histories[-1].setdefault(name, []).append(float(value))
        if non_finite({name: [float(value)] for name, value in (logs or {}).items()}):
            model.stop_training = True  # TerminateOnNaN watches the training loss only; run_trial then fails it

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        try:
            super().on_trial_end(trial)
        except RuntimeError:
            if stopped_by_failures(self.oracle):  # raised before KerasTuner saved the trial's end
                trial_file = os.path.join(self.get_trial_dir(trial.trial_id), "trial.json")
                self.oracle.get_trial(trial.trial_id).save(trial_file)
            raise
        finally:
            self.report_trial(trial)
        check()

    def report_trial(self, trial: kt.engine.trial.Trial) -> None:
        """Close the trial's run (FAILED with the reason, or FINISHED with its score) and log its line."""
        ended = self.oracle.get_trial(trial.trial_id)  # the oracle's verdict (a worker's copy has no score)
        score = ended.score if is_scored(ended) else None
        objective = self.oracle.objective.name
        metrics = {objective: score} if score is not None else {}
        if self.folds and score is not None:
            metrics |= {f"fold{r['fold']}_{objective}": r["score"]
                        for r in read_fold_results(Path(self.get_trial_dir(trial.trial_id)))}
        if self.plots and any(self.histories):
            path = Path(self.get_trial_dir(trial.trial_id)) / "training_curves.png"
            plot_history(self.histories, path, f"trial {trial.trial_id}")
            self.tracker.log_trial_artifact(path)
        status = STATUS.get(str(ended.status), "FAILED")
        self.tracker.end_trial(status, metrics, error=trial_error(trial.message))
        line = f"trial {trial.trial_id} {str(ended.status).lower()}: "
        line += f"{objective}={score:.4f}" if score is not None else failure_reason(trial.message)
        best = [t for t in self.oracle.get_best_trials(1) if is_scored(t)]
        if best:
            line += f" (best so far {best[0].score:.4f}, trial {best[0].trial_id})"
        log.log(logging.INFO if score is not None else logging.WARNING, "%s  [%s]", line,
                format_hparams(trial.hyperparameters.values))
        if score is None and trial.message:
            file_log.info("trial %s: %s", trial.trial_id, trial.message.strip())


class BayesianOptimization(TrackedTuner, kt.BayesianOptimization):
    """KerasTuner's Bayesian optimization (Gaussian process) with tracking and ``BayesianOracle``.

    Takes ``kt.BayesianOptimization``'s arguments: the oracle's go to the oracle, the rest to the tuner.
    """

    def __init__(self, hypermodel: kt.HyperModel | None = None, *, tracker: Tracker | None = None,
                 folds: Sequence[tuple[Any, Any]] = (), role: Role = "lone", plots: bool = True,
                 **kwargs: Any) -> None:
        self._track(tracker, folds, role, plots)
        oracle = BayesianOracle(**{k: kwargs.pop(k) for k in ORACLE_ARGS & set(kwargs)})
        # kt.BayesianOptimization.__init__ only builds KerasTuner's own oracle: go past it to the Tuner.
        kt.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)


class RandomSearch(TrackedTuner, kt.RandomSearch):
    """KerasTuner's random search with tracking."""


class Hyperband(TrackedTuner, kt.Hyperband):
    """KerasTuner's Hyperband with tracking."""
