"""A search stopped or killed, then resumed from its tuner folder: no trial repeated, no run left open."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from helpers import TINY, cli_env, in_trial, runs


def signal_in_trial(args: list[str], cwd: Path, cache_dir: Path, trial_line: str, sig: int) -> tuple[int, str]:
    """Run the CLI and send ``sig`` at the first training step after ``trial_line``: its exit code and output."""
    return in_trial(args, cwd, cache_dir, trial_line, lambda proc: proc.send_signal(sig))


def test_a_stopped_search_resumes_without_repeating_trials(tmp_path, cache_dir):
    """A scheduler's stop (SIGTERM: timeout, Slurm, Kubernetes) in trial 1 ends the runs KILLED as Ctrl-C
    does (the launcher's test sends that); rerun with the same tuner folder: trial 0 is not run again,
    trial 1 is retried (its interrupted run stays KILLED), and the same MLflow search run finishes."""
    args = [sys.executable, "-m", "histo_exp", *TINY, "tuner.max_trials=2", "trainer.epochs=25",
            "trainer.early_stopping_patience=null", f"hydra.run.dir={tmp_path}/first"]
    code, first = signal_in_trial(args, tmp_path, cache_dir, "trial 1 of at most 2", signal.SIGTERM)
    assert code == 143 and "stopped (SIGTERM)" in first, first[-3000:]
    assert "marked KILLED in MLflow: trial run" in first
    # The message gives the command that resumes it: the same overrides, with the run's tuner folder.
    said = next(line for line in first.splitlines() if "to resume the search: " in line)
    resume = shlex.split(said.split("to resume the search: ", 1)[1])
    assert resume[:3] == ["python", "-m", "histo_exp"] and resume[-1] == f"tuner.directory={tmp_path}/first"
    args = [sys.executable, *resume[1:]]
    _, search, trials = runs(tmp_path)
    assert [r.info.status for r in search] == ["KILLED"]
    assert sorted((t.data.tags["histo_exp.trial_id"], t.info.status) for t in trials) == [
        ("0", "FINISHED"), ("1", "KILLED")]
    killed = next(t.info.run_id for t in trials if t.info.status == "KILLED")

    quick = [*args, "trainer.epochs=2"]  # the retried trial need not run its 25 epochs
    again = subprocess.run(quick, cwd=tmp_path, env=cli_env(cache_dir), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trainer.epochs: 25 -> 2" in again.stderr + again.stdout  # said, and the run keeps its params
    assert "resuming the search saved in" in again.stderr + again.stdout
    client, search_after, trials = runs(tmp_path)
    assert [r.info.run_id for r in search_after] == [search[0].info.run_id]  # the same search run
    assert search_after[0].info.status == "FINISHED"
    assert search_after[0].data.tags["histo_exp.resumed"] == "1" and "test_auc" in search_after[0].data.metrics
    finished = Counter(t.data.tags["histo_exp.trial_id"] for t in trials if t.info.status == "FINISHED")
    assert finished == {"0": 1, "1": 1}  # each trial once: trial 0 was not repeated
    assert [t.info.status for t in trials if t.info.run_id == killed] == ["KILLED"]
    retry = next(t for t in trials if t.data.tags["histo_exp.trial_id"] == "1" and t.info.status == "FINISHED")
    assert retry.data.tags["histo_exp.retry_of"] == killed
    oracle = json.loads((tmp_path / "first" / "tuner" / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {} and sorted(oracle["end_order"]) == ["0", "1"]

    fresh = subprocess.run([*quick, "tuner.overwrite=true", "tuner.max_trials=1"], cwd=tmp_path,
                           env=cli_env(cache_dir), capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "starting over" in fresh.stderr + fresh.stdout
    _, search_final, trials_final = runs(tmp_path)
    new = [r for r in search_final if r.info.run_id != search[0].info.run_id]
    assert len(new) == 1 and new[0].info.status == "FINISHED" and "histo_exp.resumed" not in new[0].data.tags
    assert sum(t.data.tags["mlflow.parentRunId"] == new[0].info.run_id for t in trials_final) == 1
    assert len(list((tmp_path / "first" / "tuner").glob("trial_*"))) == 1


def test_after_a_kill_the_resume_closes_the_orphaned_trial_run(tmp_path, cache_dir):
    """A SIGKILL, which nothing can catch, leaves the runs RUNNING; the resume closes the orphaned trial
    run and the search finishes."""
    stop = signal.SIGKILL
    args = [sys.executable, "-m", "histo_exp", *TINY, "tuner.max_trials=1", "trainer.epochs=25",
            "trainer.early_stopping_patience=null", f"hydra.run.dir={tmp_path}/search"]
    code, first = signal_in_trial(args, tmp_path, cache_dir, "trial 0 of at most 1", stop)
    _, search, trials = runs(tmp_path)
    assert code == -signal.SIGKILL
    assert [r.info.status for r in search] == ["RUNNING"] and [t.info.status for t in trials] == ["RUNNING"]
    orphan = trials[0].info.run_id
    again = subprocess.run([*args, "trainer.epochs=1"], cwd=tmp_path, env=cli_env(cache_dir),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"marked KILLED 1 trial run(s) left RUNNING by a process that was killed: {orphan}" in again.stdout + again.stderr
    _, search, trials = runs(tmp_path)
    assert [r.info.status for r in search] == ["FINISHED"]
    assert sorted((t.data.tags["histo_exp.trial_id"], t.info.status) for t in trials) == [
        ("0", "FINISHED"), ("0", "KILLED")]  # the killed attempt is closed and the trial was run again
    assert "killed" in next(t for t in trials if t.info.run_id == orphan).data.tags["histo_exp.error"]
