"""``python -m histo_exp.predict`` without what it needs: the usage, or what to pass instead; stopped
during its maps: the exit code a shell expects, the CSV whole and no empty maps folder."""

import csv
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from helpers import cli_env
from helpers import predict as main


def test_missing_arguments_and_unknown_models_say_what_to_pass(tmp_path, tiny_root):
    done = subprocess.run([sys.executable, "-m", "histo_exp.predict", "input=x"], cwd=tmp_path,
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "missing model" in done.stderr and "Usage" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # no outputs/, no .hydra/, no log file
    store = f"sqlite:///{tmp_path}/m.db"
    with pytest.raises(FileNotFoundError, match="no MLflow store at .*m.db"):
        main(["model=0123456789abcdef", f"input={tiny_root}", f"tracking_uri={store}"])
    assert not (tmp_path / "m.db").exists()
    MlflowClient(tracking_uri=store).search_experiments()  # an empty store: the run is not in it
    with pytest.raises(FileNotFoundError, match="neither a .keras file, nor a run"):
        main(["model=0123456789abcdef", f"input={tiny_root}", f"tracking_uri={store}"])


# ``python -m histo_exp.predict ARGS`` that sends itself the signal named in argv[1] as its first map is
# drawn: a real signal to a real command, at a moment the test knows. It notes when it sent it.
STOP_AT_FIRST_MAP = """
import os, runpy, signal, sys, time
import histo_exp.evaluation.maps as maps
sig, sys.argv = getattr(signal, sys.argv[1]), ["predict", *sys.argv[2:]]
draw = maps.plot_patient_map
def plot(*args, **kwargs):
    open("sent", "w").write(repr(time.time()))
    os.kill(os.getpid(), sig)
    return draw(*args, **kwargs)
maps.plot_patient_map = plot
runpy.run_module("histo_exp.predict", run_name="__main__")
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_during_the_maps_exits_128_plus_the_signal_with_the_csv_whole(tmp_path, tiny_root, keras_file, sig):
    (tmp_path / "stop.py").write_text(STOP_AT_FIRST_MAP)
    done = subprocess.run([sys.executable, "stop.py", sig.name, f"model={keras_file}", f"input={tiny_root}",
                           "output=out/p.csv", "logger=none"],
                          cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    ended = time.time()
    assert done.returncode == 128 + sig, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"stopped ({sig.name})" and "Traceback" not in done.stderr
    assert ended - float((tmp_path / "sent").read_text()) < 10
    with open(tmp_path / "out" / "p.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 240 and all(r["prob_idc"] for r in table)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p.csv"]  # no empty p_maps/, no partial file
