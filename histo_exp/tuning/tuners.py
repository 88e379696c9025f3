"""KerasTuner tuners that report every trial to a tracker, built from the ``tuner`` config."""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras_tuner as kt
import numpy as np
import scipy.optimize
from hydra.utils import instantiate

from histo_exp.evaluation.plots import plot_history
from histo_exp.space import to_plain
from histo_exp.tracking import NullTracker, Tracker
from histo_exp.tuning.failures import (fail_if_non_finite, failure_reason, is_scored, non_finite, stopped_by_failures,
                                       trial_error)
from histo_exp.tuning.folder import tuner_folder
from histo_exp.tuning.roles import role

log = logging.getLogger(__name__)

FOLD_RESULTS = "folds.json"  # in a trial's folder
STATUS = {"COMPLETED": "FINISHED", "FAILED": "FAILED", "INVALID": "FAILED", "STOPPED": "KILLED"}


def format_hparams(values: Mapping[str, Any]) -> str:
    """``a=1 b=0.001`` with floats kept short."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


class TrackedTuner:
    """Mixin for a KerasTuner tuner: one tracker trial per KerasTuner trial, and a log line.

    Uses KerasTuner's own trial hooks, so failed trials (which KerasTuner catches and marks
    FAILED or INVALID) are recorded and the search goes on. A NaN or infinite loss or metric
    fails its trial (``FailedTrialError``) rather than scoring it.
    """

    def __init__(self, *args: Any, tracker: Tracker | None = None, folds: Sequence[tuple[Any, Any]] = (),
                 **kwargs: Any) -> None:
        self._track(tracker, folds)
        super().__init__(*args, **kwargs)

    def _track(self, tracker: Tracker | None, folds: Sequence[tuple[Any, Any]]) -> None:
        if folds and isinstance(self, kt.Hyperband):
            raise ValueError("tuner=hyperband continues a trial from an earlier trial's weights, which with "
                             "tuner.cv_folds > 1 would carry one fold's training patients into another fold's "
                             "validation: use tuner=bayesian or tuner=random with patient folds")
        self.tracker = tracker or NullTracker()
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
        if role(None) == "chief":  # serves the oracle only; the workers print the trial lines
            self.oracle.verbose = 0
            fit_kwargs.pop("verbose", None)
        super().search(*fit_args, **fit_kwargs)

    def on_search_begin(self) -> None:
        super().on_search_begin()
        self.oracle.verbose = 0  # our own trial lines replace KerasTuner's tables; fit keeps its bar

    def on_trial_begin(self, trial: kt.engine.trial.Trial) -> None:
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

    def report_trial(self, trial: kt.engine.trial.Trial) -> None:
        """Close the trial's run (FAILED with the reason, or FINISHED with its score) and log its line."""
        ended = self.oracle.get_trial(trial.trial_id)  # the oracle's verdict (a worker's copy has no score)
        score = ended.score if is_scored(ended) else None
        objective = self.oracle.objective.name
        metrics = {objective: score} if score is not None else {}
        if self.folds and score is not None:
            metrics |= {f"fold{r['fold']}_{objective}": r["score"]
                        for r in read_fold_results(Path(self.get_trial_dir(trial.trial_id)))}
        if any(self.histories):
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


def fold_checkpoint(trial_dir: str | Path, fold: int) -> Path:
    """The best epoch's weights of one patient fold of a trial."""
    return Path(trial_dir) / f"checkpoint.fold{fold}.weights.h5"


def write_fold_results(trial_dir: Path, histories: Sequence[Mapping[str, list[float]]], objective: str) -> None:
    """Each fold's best objective value and its epoch (1-based): what a refit trains for."""
    results = []
    for fold, history in enumerate(histories):
        values = history.get(objective) or []
        if values:
            best = int(np.nanargmax(values))
            results.append({"fold": fold, "score": values[best], "best_epoch": best + 1})
    (trial_dir / FOLD_RESULTS).write_text(json.dumps(results, indent=1))


def read_fold_results(trial_dir: Path) -> list[dict[str, Any]]:
    """What ``write_fold_results`` wrote for a trial ([] for a trial without it)."""
    path = Path(trial_dir) / FOLD_RESULTS
    return json.loads(path.read_text()) if path.exists() else []


class BayesianOracle(kt.oracles.BayesianOptimizationOracle):
    """KerasTuner's Gaussian-process oracle, its next point found with far fewer GP predictions.

    KerasTuner maximises the upper confidence bound by L-BFGS from 50 random points, one GP
    prediction per function value and numerical gradients: some 20,000 predictions, 4-8 s between
    trials on 2 cores, about a minute of a 10-trial search. Here ``raw_samples`` random points
    are scored in one batched prediction and L-BFGS starts from the best ``restarts`` of them:
    the same GP, acquisition and optimiser, well under a second.
    """

    raw_samples = 2000
    restarts = 5

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        completed = [t for t in self.trials.values() if t.status == "COMPLETED"]
        initial = self.num_initial_points or max(3 * len(self.hyperparameters.space), 3)
        if len(completed) < initial:
            return self._random_populate_space()
        x, y = self._vectorize_trials()
        self.gpr.fit(np.nan_to_num(x, posinf=0, neginf=0), np.nan_to_num(y, posinf=0, neginf=0))

        def bound(points: np.ndarray) -> np.ndarray:  # minimised: y holds -score for a max objective
            mu, sigma = self.gpr.predict(points, return_std=True)
            return mu - self.beta * sigma

        limits = self._get_hp_bounds()

        def value_and_gradient(point: np.ndarray) -> tuple[float, np.ndarray]:  # forward differences, one prediction
            step = np.where(point + 1e-8 <= limits[:, 1], 1e-8, -1e-8)
            values = bound(np.vstack([point, point + np.diag(step)]))
            return float(values[0]), (values[1:] - values[0]) / step

        raw = self._random_state.uniform(limits[:, 0], limits[:, 1], size=(self.raw_samples, len(limits)))
        starts = raw[np.argsort(bound(raw))[:self.restarts]]
        found = [scipy.optimize.minimize(value_and_gradient, x0=start, jac=True, bounds=limits, method="L-BFGS-B")
                 for start in starts]
        best = min(found, key=lambda result: float(result.fun))
        return {"status": kt.engine.trial.TrialStatus.RUNNING, "values": self._vector_to_values(best.x)}


ORACLE_ARGS = set(inspect.signature(BayesianOracle).parameters) - {"kwargs"}


class BayesianOptimization(TrackedTuner, kt.BayesianOptimization):
    """KerasTuner's Bayesian optimization (Gaussian process) with tracking and ``BayesianOracle``.

    Takes ``kt.BayesianOptimization``'s arguments: the oracle's go to the oracle, the rest to the tuner.
    """

    def __init__(self, hypermodel: kt.HyperModel | None = None, *, tracker: Tracker | None = None,
                 folds: Sequence[tuple[Any, Any]] = (), **kwargs: Any) -> None:
        self._track(tracker, folds)
        oracle = BayesianOracle(**{k: kwargs.pop(k) for k in ORACLE_ARGS & set(kwargs)})
        # kt.BayesianOptimization.__init__ only builds KerasTuner's own oracle: go past it to the Tuner.
        kt.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)


class RandomSearch(TrackedTuner, kt.RandomSearch):
    """KerasTuner's random search with tracking."""


class Hyperband(TrackedTuner, kt.Hyperband):
    """KerasTuner's Hyperband with tracking."""


def tuner_from_config(cfg: Mapping, hypermodel: kt.HyperModel, tracker: Tracker,
                      folds: Sequence[tuple[Any, Any]] = ()) -> kt.Tuner:
    """Instantiate the configured tuner; an existing tuner folder is resumed unless told otherwise.

    Run inside ``roles.kerastuner_env``: KerasTuner reads its role from the environment.
    A worker never clears the shared folder: only the chief (or a lone process) starts over.
    """
    cfg = {k: v for k, v in to_plain(cfg).items() if not k.startswith("cv_")}  # cv_*: the runner's folds
    dist = cfg.pop("distributed", None) or {}
    worker = role(dist) == "worker"
    if worker and cfg.get("overwrite"):
        log.warning("tuner.overwrite=true is for the chief; this worker joins the search as it is")
        cfg["overwrite"] = False
    folder = tuner_folder(cfg)
    if (folder / "oracle.json").exists() and not worker:
        if cfg.get("overwrite"):
            log.info("tuner.overwrite=true: starting over in %s", folder)
            shutil.rmtree(folder)
        else:
            log.warning("resuming the search saved in %s (set tuner.overwrite=true to start over)",
                        folder)
            # KerasTuner reloads only if its own state file is there (tuner0.json alone, chief.json
            # as a chief): resuming a search begun the other way must reload too.
            own = folder / f"{os.environ.get('KERASTUNER_TUNER_ID', 'tuner0')}.json"
            if not own.exists():
                own.write_text("{}")
    return instantiate(cfg, hypermodel=hypermodel, tracker=tracker, folds=folds)
