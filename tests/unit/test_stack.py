"""The stack a run names: the main packages' versions as pip lists them, and every installed one."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
from packaging.utils import canonicalize_name as normalize

from histo_exp import stack


@pytest.fixture(scope="module")
def pip_list() -> dict[str, str]:
    listed = subprocess.run([sys.executable, "-m", "pip", "list", "--format=json"], check=True,
                            capture_output=True, text=True).stdout
    return {normalize(p["name"]): p["version"] for p in json.loads(listed)}


@pytest.mark.parametrize(("backend", "engine"), [("tensorflow", ["tensorflow"]), ("jax", ["jax", "jaxlib"])])
def test_the_main_versions_are_the_installed_ones(pip_list, backend, engine):
    found = stack.versions(backend)
    assert found["python"] == platform.python_version()
    for name in (*engine, "keras", "keras-tuner", "hydra-core", "mlflow", "numpy", "scikit-learn"):
        assert found[name] == pip_list[name], name
    line = stack.describe(backend)
    assert line.startswith(f"keras {pip_list['keras']} on the {backend} backend ("
                           + ", ".join(f"{n} {pip_list[n]}" for n in engine) + "); ")
    assert f"keras-tuner {pip_list['keras-tuner']}" in line and f"mlflow {pip_list['mlflow']}" in line
    assert line.endswith(f"; python {platform.python_version()}")


def test_a_backend_not_installed_says_so():
    assert stack.versions("torch")["torch"] in ("not installed", stack.version("torch"))
    assert stack.version("no-such-distribution") == "not installed"


def test_the_environment_lists_every_installed_distribution(pip_list):
    lines = stack.installed().splitlines()
    assert lines[0].startswith("# ") and platform.python_version() in lines[0]
    listed = {normalize(name): v for name, _, v in (line.partition("==") for line in lines[1:])}
    assert listed == pip_list
    names = [line.partition("==")[0].lower() for line in lines[1:]]
    assert names == sorted(names)
