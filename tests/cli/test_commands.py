"""The commands that are not experiments (``histo_exp.predict``, ``histo_exp.trials``) as a user runs
them: Hydra's override syntax, Hydra's errors, and a command that fails writes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cli_env, free_port


def command(cwd: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m histo_exp.<module> args`` from ``cwd``."""
    return subprocess.run([sys.executable, "-m", f"histo_exp.{module}", *args], cwd=cwd,
                          env=cli_env(cwd), capture_output=True, text=True, timeout=120)


def written(folder: Path, *given: str) -> list[str]:
    """What is in ``folder`` besides the inputs the test put there."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if not any(p.relative_to(folder).parts[0] == g for g in given))


@pytest.mark.parametrize("module, args, key", [
    ("predict", ["modle=x.keras", "input=x"], "modle"),
    ("predict", ["model=x.keras", "input=x", "treshold=0.3"], "treshold"),
    ("trials", ["sourc=abc"], "sourc"),
])
def test_an_unknown_key_is_a_hydra_error_and_writes_nothing(tmp_path, module, args, key):
    done = command(tmp_path, module, *args)
    assert done.returncode == 1 and "Traceback" not in done.stderr  # Hydra's own error: exit 1 (docs/reliability.md)
    assert f"Could not override '{key}'" in done.stderr and f"Key '{key}' is not in struct" in done.stderr
    assert written(tmp_path) == []  # no outputs/, no .hydra/, no log file


def test_the_commands_take_their_own_keys_not_the_experiments(tmp_path):
    """``model=`` names a file for predict; the experiment's groups are not there (no optimizer=)."""
    done = command(tmp_path, "predict", "model=x.keras", "input=x", "optimizer=sgd")
    assert done.returncode == 1 and "Could not override 'optimizer'" in done.stderr and "Traceback" not in done.stderr
    shown = command(tmp_path, "trials", "source=abc", "csv=t.csv", "--cfg", "job", "--resolve")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "source: abc" in shown.stdout and "csv: t.csv" in shown.stdout
    assert f"tracking_uri: sqlite:///{tmp_path}/mlruns/mlflow.db" in shown.stdout
    assert written(tmp_path) == []


def test_a_failing_predict_writes_nothing(tmp_path):
    done = command(tmp_path, "predict", "model=best_model.keras", "input=nowhere", "output=res/p.csv")
    assert done.returncode == 2
    assert "input 'nowhere' is neither a file nor a folder" in done.stderr
    assert "Traceback" not in done.stderr and "Error executing job" not in done.stderr  # the line alone
    assert written(tmp_path) == []


@pytest.mark.parametrize("output, says", [
    ("a_file/p.csv", "a_file is a file, not a folder"),
    ("/proc/p.csv", "/proc is not writable"),  # read-only even for root: permission bits would not tell
    ("out_folder", "output=out_folder is a folder: name a file in it"),
])
def test_predict_checks_its_output_before_any_inference(tmp_path, tiny_root, output, says):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "out_folder").mkdir()
    (tmp_path / "tree").symlink_to(tiny_root)
    done = command(tmp_path, "predict", "model=no_model_yet.keras", "input=tree", f"output={output}")
    assert done.returncode == 2 and says in done.stderr, done.stderr[-2000:]  # before the model is even looked up
    assert "Traceback" not in done.stderr
    assert written(tmp_path, "tree") == ["a_file", "out_folder"]


@pytest.mark.parametrize("overrides, says", [
    (["data=idc"], "data.root is not set"),
    (["data=idc", "data.root=/no/such/folder"], "'/no/such/folder' does not exist"),
    (["tuner.max_trials=0"], "tuner.max_trials must be at least 1 or null; got 0"),
    (["eval.batch_size=0"], "eval.batch_size must be at least 1; got 0"),
    (["trainer.refit=trainvall"], "trainer.refit must be one of 'none', 'trainval', 'all'; got 'trainvall' "
                                  "(did you mean 'trainval'?)"),
    (["model.kernel_size={choice: []}"], "kernel_size: a choice is written"),  # a search-space spec
    (["model.blocks=9"], "model.blocks=9 does not fit 32px images"),  # the synthetic default's size
    (["optimizer.learning_rate={min: 0.1, max: 0.01}"], "min (0.1) is larger than max (0.01)"),
])
def test_an_experiment_config_error_is_one_line_before_any_data_work_or_run(tmp_path, overrides, says):
    """Exit 2 with the line alone; no data made or decoded, no MLflow store or run: Hydra's own run
    folder (its config and log) is all there is."""
    done = subprocess.run([sys.executable, "-m", "histo_exp", *overrides], cwd=tmp_path,
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and says in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Error executing job" not in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["outputs"]  # no mlruns/, no synthetic/ or ingest/
    [run_dir] = tmp_path.glob("outputs/*/*")
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "__main__.log"]


def test_an_unknown_option_of_a_group_lists_the_options_and_makes_no_folder(tmp_path):
    done = subprocess.run([sys.executable, "-m", "histo_exp", "optimizer=adamw"], cwd=tmp_path,
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Available options" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # the config does not compose: Hydra makes no run folder


def test_a_failing_trials_export_writes_nothing(tmp_path):
    (tmp_path / "tuner").mkdir()
    done = command(tmp_path, "trials", "source=tuner", "csv=t.csv")
    assert done.returncode == 2 and done.stderr.splitlines()[-1] == "no KerasTuner trials (trial_*/trial.json) under tuner"
    assert "Traceback" not in done.stderr
    assert written(tmp_path, "tuner") == []


@pytest.mark.parametrize("module, args", [
    ("predict", ["model=0123456789abcdef", "input=tree"]),
    ("trials", ["source=0123456789abcdef"]),
])
def test_a_run_id_without_a_store_is_an_error_that_creates_no_store(tmp_path, tiny_root, module, args):
    """Looking a run up must not leave an empty ./mlruns/mlflow.db behind (MLflow makes one on open)."""
    (tmp_path / "tree").symlink_to(tiny_root)
    done = command(tmp_path, module, *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"no MLflow store at sqlite:///{tmp_path}/mlruns/mlflow.db" in done.stderr
    assert written(tmp_path, "tree") == []


@pytest.mark.parametrize("module, args", [
    ("predict", ["model=0123456789abcdef", "input=tree"]),
    ("trials", ["source=0123456789abcdef"]),
])
def test_a_run_id_with_logger_none_says_there_is_no_store(tmp_path, tiny_root, module, args):
    (tmp_path / "tree").symlink_to(tiny_root)
    done = command(tmp_path, module, *args, "logger=none")
    assert done.returncode == 2 and "no MLflow store to look this up in (logger=none)" in done.stderr
    assert "Traceback" not in done.stderr
    assert written(tmp_path, "tree") == []


def test_a_model_that_is_not_there_leaves_no_output_folder(tmp_path, tiny_root):
    done = command(tmp_path, "predict", "model=missing.keras", f"input={tiny_root}", "output=res/p.csv",
                   f"tracking_uri=sqlite:///{tmp_path.parent}/{tmp_path.name}-elsewhere.db")
    assert done.returncode == 2 and "missing.keras" in done.stderr and "Traceback" not in done.stderr
    assert written(tmp_path) == []


def test_a_tracking_server_that_does_not_answer_fails_before_any_data_work(tmp_path):
    """MLflow's own HTTP retries spent 255 s on this before giving up, after the data was decoded."""
    uri = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run([sys.executable, "-m", "histo_exp", f"logger.tracking_uri={uri}"], cwd=tmp_path,
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"no MLflow server answers at logger.tracking_uri={uri}" in done.stderr and "make server" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "synthetic").exists()
