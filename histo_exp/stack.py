"""The software a run used: the main packages' versions, printed once per run and recorded with its results,
so a number can be traced to the stack that produced it (``make install`` pins them: requirements-lock.txt)."""

from __future__ import annotations

import importlib.metadata
import platform

# The distribution(s) each Keras backend is; the first is the one a saved model needs.
BACKENDS = {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib"), "torch": ("torch",)}
MAIN = ("keras", "keras-tuner", "hydra-core", "mlflow", "numpy", "scikit-learn", "opencv-python-headless")


def version(name: str) -> str:
    """The installed version of distribution ``name``, or ``"not installed"``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions(backend: str) -> dict[str, str]:
    """Python and the main packages under Keras backend ``backend``, by distribution name."""
    names = (*BACKENDS.get(backend, (backend,)), *MAIN)
    return {"python": platform.python_version(), **{name: version(name) for name in names}}


def describe(backend: str) -> str:
    """One line for the console: ``keras 3.15.1 on the jax backend (jax 0.10.2, jaxlib 0.10.2); keras-tuner ...``."""
    found = versions(backend)
    engine = ", ".join(f"{name} {found.pop(name)}" for name in BACKENDS.get(backend, (backend,)))
    keras = found.pop("keras")
    python = found.pop("python")
    rest = ", ".join(f"{name} {v}" for name, v in found.items())
    return f"keras {keras} on the {backend} backend ({engine}); {rest}; python {python}"


def installed() -> str:
    """Every distribution in this environment as ``name==version`` lines, sorted: what ``pip freeze`` lists."""
    found = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}
    lines = [f"{name}=={found[name]}" for name in sorted(found, key=str.lower)]
    return f"# the Python environment of this run (python {platform.python_version()})\n" + "\n".join(lines) + "\n"
