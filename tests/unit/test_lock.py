"""requirements-lock.txt: in step with pyproject.toml's ranges and every package's own requirements, and what
`make install` installed here. The checks are shown to catch a lock that drifted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import tomllib

from helpers import REPO

sys.path.insert(0, str(REPO / "scripts"))
import lock  # noqa: E402

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def pins() -> dict[str, str]:
    return lock.read_lock((REPO / "requirements-lock.txt").read_text())


def test_the_lock_agrees_with_pyproject_and_every_locked_packages_requirements(pins):
    assert lock.disagreements(pins, PYPROJECT) == []
    for name in ("keras", "keras-tuner", "tensorflow", "jax", "hydra-core", "mlflow", "ray", "pytest", "pip",
                 "setuptools"):
        assert name in pins


def test_this_environment_is_exactly_the_lock(pins):
    """`make install` put the locked versions here and nothing else; pip's own listing is the reference."""
    listed = subprocess.run([sys.executable, "-m", "pip", "list", "--format=json"], check=True,
                            capture_output=True, text=True).stdout
    found = {lock.normalize(p["name"]): p["version"] for p in json.loads(listed)}
    assert found.pop("histo-exp") == "0.1.0"
    assert found == pins
    assert lock.installed() == found


@pytest.mark.parametrize(("change", "expected"), [
    (lambda p: p.pop("mlflow"), "mlflow (mlflow>=3.0, required by histo-exp) is not locked"),
    (lambda p: p.update(keras="3.2.1"), "keras==3.2.1 is locked, but histo-exp requires keras>=3.3"),
    (lambda p: p.pop("ray"), "ray (ray"),  # through dev -> histo_exp[ray] -> hydra-ray-launcher
    (lambda p: p.pop("alembic"), "required by mlflow) is not locked"),  # two levels down
    (lambda p: p.update({"left-pad": "1.0"}), "left-pad==1.0 is locked but nothing requires it"),
    (lambda p: p.pop("setuptools"), "setuptools"),  # the build requirement `make install` builds with
])
def test_a_lock_that_drifted_from_the_requirements_is_reported(pins, change, expected):
    drifted = dict(pins)
    change(drifted)
    problems = lock.disagreements(drifted, PYPROJECT)
    assert any(expected in p for p in problems), problems


def test_a_new_dependency_in_pyproject_needs_a_new_lock(pins):
    grown = {**PYPROJECT, "project": {**PYPROJECT["project"],
                                      "dependencies": [*PYPROJECT["project"]["dependencies"], "tifffile>=2024.1"]}}
    unknown = {**PYPROJECT, "project": {**PYPROJECT["project"],
                                        "dependencies": [*PYPROJECT["project"]["dependencies"], "openslide-bin"]}}
    assert lock.disagreements(pins, grown) == []  # scikit-image already brings it, at a version in range
    assert lock.disagreements(pins, unknown) == ["openslide-bin (openslide-bin, required by histo-exp) is not locked"]


def test_an_extra_marker_limits_a_requirement_to_that_extra(pins):
    """jax-cuda is an extra `make install` does not install: its packages are neither needed nor locked."""
    assert "jax-cuda13-plugin" not in pins and "jax-cuda13-pjrt" not in pins
    problems = lock.disagreements(pins, PYPROJECT, extras=("dev", "jax-cuda"))
    assert any(p.startswith("jax-cuda13-") and p.endswith("is not locked") for p in problems), problems


def test_drift_names_each_package_installed_at_another_version_or_unlocked():
    assert lock.drift({"a": "1.0", "b": "2.0"}, {"a": "1.0", "b": "2.1", "c": "0.1"}) == [
        "b 2.1 is installed, the lock says 2.0", "c 0.1 is installed but not locked"]


def test_the_lock_reads_back_what_was_written_and_refuses_a_malformed_line():
    pins = {"keras-tuner": "1.4.8", "numpy": "2.4.6"}
    assert lock.read_lock(lock.lock_text(pins, "26.3")) == pins
    assert lock.read_lock("Keras_Tuner==1.4.8  # a comment\n\n") == {"keras-tuner": "1.4.8"}
    with pytest.raises(ValueError, match="line 2 .*expected name==version"):
        lock.read_lock("numpy==2.4.6\nkeras>=3.3\n")
    with pytest.raises(ValueError, match="line 2 of the lock pins numpy a second time"):
        lock.read_lock("numpy==2.4.6\nNumPy==2.4.5\n")
