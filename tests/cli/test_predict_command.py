"""``python -m histo_exp.predict`` without what it needs: the usage, or what to pass instead."""

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from helpers import cli_env
from helpers import predict as main


def test_missing_arguments_and_unknown_models_say_what_to_pass(tmp_path, tiny_root):
    done = subprocess.run([sys.executable, "-m", "histo_exp.predict", "input=x"], cwd=tmp_path,
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "missing model" in done.stderr and "Usage" in done.stderr
    assert list(tmp_path.iterdir()) == []  # no outputs/, no .hydra/, no log file
    store = f"sqlite:///{tmp_path}/m.db"
    with pytest.raises(FileNotFoundError, match="no MLflow store at .*m.db"):
        main(["model=0123456789abcdef", f"input={tiny_root}", f"tracking_uri={store}"])
    assert not (tmp_path / "m.db").exists()
    MlflowClient(tracking_uri=store).search_experiments()  # an empty store: the run is not in it
    with pytest.raises(FileNotFoundError, match="neither a .keras file, nor a run"):
        main(["model=0123456789abcdef", f"input={tiny_root}", f"tracking_uri={store}"])
