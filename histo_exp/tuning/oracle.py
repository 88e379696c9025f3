"""KerasTuner's Gaussian-process oracle, with a faster search for its next point."""

from __future__ import annotations

import inspect
from typing import Any

import keras_tuner as kt
import numpy as np
import scipy.optimize


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


ORACLE_ARGS = set(inspect.signature(BayesianOracle).parameters) - {"kwargs"}  # the rest are the Tuner's
