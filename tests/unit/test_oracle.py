"""The Bayesian search's oracle: KerasTuner's Gaussian process, its next point found in one batched search."""

import keras_tuner as kt
import numpy as np

from histo_exp.tuning.tuners import BayesianOracle


def space() -> kt.HyperParameters:
    hp = kt.HyperParameters()
    hp.Int("blocks", 1, 3)
    hp.Choice("kernel_size", [5, 3])
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    return hp


def score(values: dict) -> float:
    """A made-up objective, best at two blocks and a learning rate of 1e-3."""
    return 0.9 - 0.05 * abs(values["blocks"] - 2) - 0.02 * (np.log10(values["learning_rate"]) + 3) ** 2


def oracle(cls: type, tmp_path, name: str) -> kt.Oracle:
    made = cls(objective=kt.Objective("score", "max"), max_trials=8, num_initial_points=3, seed=7,
               hyperparameters=space())
    made._set_project_dir(str(tmp_path), name)
    made.verbose = 0
    return made


def run(made: kt.Oracle, trials: int) -> list[dict]:
    proposed = []
    for i in range(trials):
        trial = made.create_trial(f"t{i}")
        proposed.append(dict(trial.hyperparameters.values))
        made.update_trial(trial.trial_id, {"score": score(trial.hyperparameters.values)})
        trial.status = "COMPLETED"
        made.end_trial(trial)
    return proposed


def acquisition(made: kt.Oracle, values: dict) -> float:
    """The oracle's upper confidence bound at ``values`` (KerasTuner's sign: lower is better)."""
    point = [hp.value_to_prob(values[hp.name]) for hp in made._nonfixed_space()]
    mu, sigma = made.gpr.predict(np.array([point]), return_std=True)
    return float(mu[0] - made.beta * sigma[0])


def test_the_same_seed_proposes_the_same_trials_inside_the_space(tmp_path):
    first, second = run(oracle(BayesianOracle, tmp_path, "a"), 6), run(oracle(BayesianOracle, tmp_path, "b"), 6)
    assert first == second
    for values in first:
        assert values["blocks"] in (1, 2, 3) and values["kernel_size"] in (5, 3)
        assert 1e-4 <= values["learning_rate"] <= 1e-2


def test_its_proposal_is_at_least_as_good_for_the_gp_as_kerastuners_own(tmp_path):
    ours, theirs = oracle(BayesianOracle, tmp_path, "ours"), oracle(kt.oracles.BayesianOptimizationOracle,
                                                                      tmp_path, "theirs")
    assert run(ours, 3) == run(theirs, 3)  # the same 3 random trials, so the same GP fits them
    ours_next = ours.populate_space("next")["values"]
    theirs_next = theirs.populate_space("next")["values"]
    assert acquisition(ours, ours_next) <= acquisition(ours, theirs_next) + 1e-6
