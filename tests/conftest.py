"""Shared fixtures: composed configs (Hydra compose API), tiny datasets, the CLI."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from histo_exp.config import CONFIG_DIR
from histo_exp.data.synthetic import SyntheticSpec, generate

from helpers import cli_env


@pytest.fixture(autouse=True)
def no_stop_left_over():
    """A test that stops a search in this process must not leave the stop to the next test."""
    yield
    from histo_exp import signals

    signals.reset()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One data cache for the whole session, so synthetic sets are made once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_root(cache_dir) -> Path:
    """A tiny synthetic dataset in the IDC layout (6 patients x 40 patches)."""
    return generate(cache_dir / "tiny", SyntheticSpec(patients=6, patches_per_patient=40, seed=3))


@pytest.fixture
def compose_cfg(tmp_path, cache_dir) -> Callable[..., DictConfig]:
    """Compose the real config with overrides; paths point into this test's tmp folder."""

    def _compose(*overrides: str) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(
                "config",
                overrides=[
                    f"paths.work_dir={tmp_path}",
                    f"paths.output_dir={tmp_path}/out",
                    f"paths.cache_dir={cache_dir}",
                    *overrides,
                ],
            )

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture
def run_cli(tmp_path, cache_dir) -> Callable[..., subprocess.CompletedProcess]:
    """Run ``python -m histo_exp`` as a user would, from a folder other than the repo."""

    def _run(args: Sequence[str], timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "histo_exp", *args],
            cwd=tmp_path, env=cli_env(cache_dir), capture_output=True, text=True, timeout=timeout,
        )

    return _run


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory) -> Path:
    """A tiny two-class Keras model saved as .keras."""
    import keras

    from helpers import SHAPE

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="softmax")])
    path = tmp_path_factory.mktemp("model") / "best_model.keras"
    model.save(path)
    return path


@pytest.fixture
def patches():
    """Five random uint8 patches the tiny model takes."""
    import numpy as np

    from helpers import SHAPE

    return np.random.default_rng(1).integers(0, 256, (5, *SHAPE), dtype=np.uint8)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One SQLite store for the module: creating its tables takes a second or two."""
    return tmp_path_factory.mktemp("mlruns")
