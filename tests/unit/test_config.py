"""Every config group composes and builds what it describes; CLI-style overrides work."""

from types import SimpleNamespace

import keras_tuner as kt
import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from histo_exp import build
from histo_exp.settings import load
from histo_exp.space import sample
from histo_exp.tracking import MlflowTracker, NullTracker
from histo_exp.tuning.oracle import BayesianOracle
from histo_exp.tuning.search_folder import SearchFolder


def test_defaults_are_synthetic_cnn_adam_bayesian_mlflow(compose_cfg, tmp_path):
    cfg = compose_cfg()
    choices = (cfg.data.name, cfg.model.name, cfg.optimizer.name)
    assert choices == ("synthetic", "cnn", "adam")
    assert cfg.tuner._target_.endswith("BayesianOptimization") and cfg.tuner.max_trials == 10
    assert cfg.tuner.objective.name == "val_auc" and cfg.tuner.objective.direction == "max"
    assert cfg.logger.tracking_uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert cfg.data.color == "rgb"
    assert cfg.data.image_size == 32 and cfg.data.synthetic.patches_per_patient == 60  # sized for a short make run
    assert compose_cfg("data=idc").data.image_size == 50  # the dataset's own size
    OmegaConf.resolve(cfg)  # every interpolation resolves


@pytest.mark.parametrize("optimizer, cls, searched", [
    ("adam", "Adam", {"learning_rate"}),
    ("rmsprop", "RMSprop", {"learning_rate", "rho"}),
    ("sgd", "SGD", {"learning_rate", "momentum"}),
])
def test_optimizer_groups_build_keras_optimizers(compose_cfg, optimizer, cls, searched):
    cfg = compose_cfg(f"optimizer={optimizer}")
    hp = kt.HyperParameters()
    opt = instantiate(sample(hp, cfg.optimizer))
    assert type(opt).__name__ == cls
    assert {h.name for h in hp.space} == searched
    lr = hp.space[0]
    assert lr.name == "learning_rate" and lr.sampling == "log"


def test_adam_fixes_betas_and_epsilon_unless_overridden(compose_cfg):
    opt = instantiate(sample(kt.HyperParameters(), compose_cfg("optimizer.beta_1=0.8").optimizer))
    assert (opt.beta_1, opt.beta_2, opt.epsilon) == (0.8, 0.999, 1e-8)


@pytest.mark.parametrize("tuner, cls", [
    ("bayesian", "BayesianOptimization"), ("random", "RandomSearch"), ("hyperband", "Hyperband"),
])
def test_tuner_groups_build_tracked_keras_tuners(compose_cfg, monkeypatch, tuner, cls):
    settings = load(compose_cfg(f"tuner={tuner}", "debug=fast"))
    data = SimpleNamespace(input_shape=(32, 32, 3), classes=("0", "1"))
    monkeypatch.setattr(build, "cv_folds", lambda settings, data: [])  # no data: the one split
    monkeypatch.setattr(build, "class_weight", lambda data, mode: None)
    built = build.tuner(settings, data, NullTracker(), SearchFolder.of(settings.tuner))
    assert isinstance(built, getattr(kt, cls))
    assert isinstance(built.oracle, BayesianOracle) == (tuner == "bayesian")  # the faster acquisition search
    assert built.oracle.objective.name == "val_auc" and built.oracle.objective.direction == "max"


def test_logger_groups(compose_cfg, tmp_path):
    """logger=none writes nothing; logger=mlflow makes the SQLite store and the experiment, once."""
    assert type(instantiate(compose_cfg("logger=none").logger)) is NullTracker
    assert not (tmp_path / "mlruns").exists()
    tracker = instantiate(compose_cfg().logger)
    assert isinstance(tracker, MlflowTracker)
    assert tracker.tracking_uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    exp = client.get_experiment_by_name("histo_exp")
    assert exp is not None and exp.experiment_id == tracker.experiment_id
    assert exp.artifact_location == (tmp_path / "mlruns" / "artifacts").as_uri()
    again = instantiate(compose_cfg("logger.experiment_name=histo_exp").logger)
    assert again.experiment_id == tracker.experiment_id  # reused, not made twice
    assert [e.name for e in client.search_experiments()].count("histo_exp") == 1


def test_data_idc_and_the_original_method_experiment(compose_cfg):
    cfg = compose_cfg("data=idc", "data.root=/data/IDC")
    assert cfg.data.root == "/data/IDC" and "synthetic" not in cfg.data
    cfg = compose_cfg("experiment=idc_original", "data.root=/data/IDC")
    assert cfg.data.name == "idc" and cfg.data.color == "gray" and cfg.model.blocks.max == 5
    assert cfg.tuner.max_trials == 10 and cfg.eval.ensemble == 1


def test_data_idc_runs_the_seeds_own_search(compose_cfg):
    """data=idc brings only where and how to read the data: the 10-trial search over the whole space, as with
    the synthetic data (no candidate beat it on new patients: docs/generalisation.md)."""
    idc, synthetic = compose_cfg("data=idc"), compose_cfg()
    for key in ("tuner", "model", "eval", "optimizer", "trainer"):
        assert idc[key] == synthetic[key], key
    assert idc.tuner.max_trials == 10 and idc.eval.ensemble == 1 and idc.model.blocks.max > 2


def test_command_line_changes_the_search_space(compose_cfg):
    cfg = compose_cfg("model.dropout={min: 0.1, max: 0.5}", "optimizer.learning_rate=1e-3")
    hp = kt.HyperParameters()
    assert sample(hp, cfg.optimizer)["learning_rate"] == 1e-3
    sample(hp, cfg.model)
    dropout = next(h for h in hp.space if h.name == "dropout")
    assert (dropout.min_value, dropout.max_value) == (0.1, 0.5)
    assert "learning_rate" not in {h.name for h in hp.space}


def test_unknown_group_option_lists_the_choices(compose_cfg):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("optimizer=adamw")
    assert "adam" in str(err.value) and "rmsprop" in str(err.value) and "sgd" in str(err.value)
