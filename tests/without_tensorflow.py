"""``python tests/without_tensorflow.py <module> [args]``: run a module as on a machine where TensorFlow
is not installed (a GPU box with jax only): importing it, or tensorboard, fails as it would there."""

import importlib.abc
import runpy
import sys


class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorboard"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoTensorFlow())
sys.path.pop(0)  # this script's folder: the module comes from the installed package, as with python -m
module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
