"""One search across processes and restarts: resume after Ctrl-C, chief and workers, launchers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from helpers import TINY, cli_env, in_trial, runs, saved_model_test_auc
from histo_exp.launch import commands, device_env
from histo_exp.settings import load
from histo_exp.tuning.search_folder import SearchFolder


def test_distributed_config_becomes_kerastuners_environment(compose_cfg, monkeypatch):
    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.delenv(name, raising=False)

    def folder(*overrides: str) -> SearchFolder:
        return SearchFolder.of(load(compose_cfg(*overrides)).tuner)

    worker = folder("tuner.distributed.role=worker", "tuner.distributed.worker_id=3", "tuner.distributed.port=9123")
    assert worker.role == "worker" and worker.env == {"KERASTUNER_TUNER_ID": "worker3",
                                                      "KERASTUNER_ORACLE_IP": "127.0.0.1",
                                                      "KERASTUNER_ORACLE_PORT": "9123"}
    assert folder("tuner.distributed.role=chief").env["KERASTUNER_TUNER_ID"] == "chief"
    assert folder().env == {} and folder().role == "lone"
    unnamed = folder("tuner.distributed.role=worker").env
    assert unnamed["KERASTUNER_TUNER_ID"].startswith("worker-")  # host and pid: never two alike
    with worker.entered():  # set for the run, gone after it
        assert os.environ["KERASTUNER_TUNER_ID"] == "worker3"
    assert "KERASTUNER_TUNER_ID" not in os.environ
    with pytest.raises(ValueError, match="tuner.distributed.role must be one of 'chief', 'worker' or null"):
        folder("tuner.distributed.role=boss")
    # KerasTuner's own protocol, set by a cluster scheduler, is understood too.
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner7")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "10.0.0.1")
    assert folder().role == "worker"


def test_workers_wait_for_a_running_search_run_and_say_what_to_fix(tmp_path):
    SearchFolder(tmp_path, session="s1").record_run("abc", "sqlite:///x.db")
    alone = SearchFolder(tmp_path)
    assert alone.recorded_run("sqlite:///x.db") == "abc"
    assert alone.recorded_run("http://elsewhere") is None  # another store: not this run
    assert alone.wait_for_run("sqlite:///x.db", lambda run: run == "abc", 5) == "abc"
    with pytest.raises(TimeoutError, match="start the chief"):  # recorded but ended: a stale record
        alone.wait_for_run("sqlite:///x.db", lambda run: False, 0.3, poll_s=0.1)
    with pytest.raises(TimeoutError):  # running, but an earlier launch's chief: not this session's
        SearchFolder(tmp_path, session="s2").wait_for_run("sqlite:///x.db", lambda run: True, 0.3, poll_s=0.1)
    assert SearchFolder(tmp_path, session="s1").wait_for_run("sqlite:///x.db", lambda run: True, 5) == "abc"


def test_one_process_at_a_time_leads_a_search(tmp_path):
    folder = SearchFolder(tmp_path / "tuner")
    with folder.led():
        code = ("import sys; from pathlib import Path; from histo_exp.tuning.search_folder import SearchFolder\n"
                "with SearchFolder(Path(sys.argv[1])).led(): pass")
        other = subprocess.run([sys.executable, "-c", code, str(folder.path)], capture_output=True, text=True)
        assert other.returncode != 0 and "another process is running the search" in other.stderr
    with folder.led():  # free again once the holder is done
        pass


def test_launcher_gives_every_process_the_same_folder_and_port(tmp_path):
    cmds = commands(2, tmp_path, 9000, ["debug=fast"], session="abc")
    assert list(cmds) == ["chief", "worker1", "worker2"]
    for name, cmd in cmds.items():
        assert f"tuner.directory={tmp_path}" in cmd and "tuner.distributed.port=9000" in cmd
        assert f"hydra.run.dir={tmp_path}/{name}" in cmd and "debug=fast" in cmd
        assert "tuner.distributed.session=abc" in cmd
    assert "tuner.distributed.worker_id=2" in cmds["worker2"]
    # One GPU per worker, round robin; the chief (index 0) keeps off the GPUs.
    assert [device_env(i, ["0", "1"])["CUDA_VISIBLE_DEVICES"] for i in range(4)] == ["", "0", "1", "0"]
    assert device_env(1, ["0"])["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"  # workers may share a GPU
    assert device_env(1, []) == {}


def signal_in_trial(args: list[str], cwd: Path, cache_dir: Path, trial_line: str, sig: int) -> tuple[int, str]:
    """Run the CLI and send ``sig`` at the first training step after ``trial_line``: its exit code and output."""
    return in_trial(args, cwd, cache_dir, trial_line, lambda proc: proc.send_signal(sig))


@pytest.mark.slow
def test_interrupted_search_resumes_without_repeating_trials(tmp_path, cache_dir):
    """Ctrl-C in trial 1, rerun with the same tuner folder: trial 0 is not run again, trial 1 is
    retried (its interrupted run stays KILLED), and the same MLflow search run finishes."""
    args = [sys.executable, "-m", "histo_exp", *TINY, "tuner.max_trials=3", "trainer.epochs=25",
            "trainer.early_stopping_patience=null", f"tuner.directory={tmp_path}/search"]
    code, first = signal_in_trial(args, tmp_path, cache_dir, "trial 1 of at most 3", signal.SIGINT)
    assert code == 130 and "interrupted" in first, first[-3000:]
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
    assert finished == {"0": 1, "1": 1, "2": 1}  # each trial once: trial 0 was not repeated
    assert [t.info.status for t in trials if t.info.run_id == killed] == ["KILLED"]
    retry = next(t for t in trials if t.data.tags["histo_exp.trial_id"] == "1" and t.info.status == "FINISHED")
    assert retry.data.tags["histo_exp.retry_of"] == killed
    oracle = json.loads((tmp_path / "search" / "tuner" / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {} and sorted(oracle["end_order"]) == ["0", "1", "2"]

    fresh = subprocess.run([*quick, "tuner.overwrite=true", "tuner.max_trials=1"], cwd=tmp_path,
                           env=cli_env(cache_dir), capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "starting over" in fresh.stderr + fresh.stdout
    _, search_final, trials_final = runs(tmp_path)
    new = [r for r in search_final if r.info.run_id != search[0].info.run_id]
    assert len(new) == 1 and new[0].info.status == "FINISHED" and "histo_exp.resumed" not in new[0].data.tags
    assert sum(t.data.tags["mlflow.parentRunId"] == new[0].info.run_id for t in trials_final) == 1
    assert len(list((tmp_path / "search" / "tuner").glob("trial_*"))) == 1


@pytest.mark.slow
def test_chief_and_two_workers_log_each_trial_once_under_one_search(tmp_path, cache_dir):
    done = subprocess.run(
        [sys.executable, "-m", "histo_exp.launch", "--workers", "2", "--dir", str(tmp_path / "dist"),
         *TINY, "tuner.max_trials=4"],
        cwd=tmp_path, env=cli_env(cache_dir), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "[chief]" in done.stdout and "[worker1]" in done.stdout and "[worker2]" in done.stdout
    client, search, trials = runs(tmp_path)
    assert len(search) == 1 and search[0].info.status == "FINISHED"
    # The chief evaluated the best model on the test patients of its split.csv.
    assert search[0].data.metrics["test_auc"] == pytest.approx(
        saved_model_test_auc(tmp_path / "dist" / "chief", search[0].data.params["data.root"]), abs=1e-4)
    assert sorted(t.data.tags["histo_exp.trial_id"] for t in trials) == ["0", "1", "2", "3"]
    assert all(t.data.tags["mlflow.parentRunId"] == search[0].info.run_id for t in trials)
    assert all(t.info.status == "FINISHED" and "val_auc" in t.data.metrics for t in trials)
    best = max(t.data.metrics["val_auc"] for t in trials)
    assert search[0].data.metrics["best_val_auc"] == pytest.approx(best)  # the workers' trials, compared
    assert {t.data.tags["histo_exp.tuner_id"] for t in trials} <= {"worker1", "worker2"}
    artifacts = {a.path for a in client.list_artifacts(search[0].info.run_id)}
    assert {"training_curves.png", "trials.csv", "model"} <= artifacts


def test_parallel_jobs_make_one_synthetic_dataset(tmp_path):
    """A chief and its workers (or joblib jobs) start at once: the same dataset must come out whole."""
    code = ("import sys; from histo_exp.data.synthetic import SyntheticSpec, generate; "
            "generate(sys.argv[1], SyntheticSpec(patients=4, patches_per_patient=30, seed=5))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "set")], stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    assert len(list((tmp_path / "set").glob("*/*/*.png"))) == 120
    # one process built it while the others waited: no partial folders left behind, only the lock file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set", "set.lock"]


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_scheduler_stop_or_a_kill_leaves_no_run_running(tmp_path, cache_dir, stop):
    """SIGTERM (timeout, Slurm, Kubernetes) ends the runs KILLED like Ctrl-C; after a SIGKILL, which
    nothing can catch, the resume closes the orphaned trial run and the search finishes."""
    args = [sys.executable, "-m", "histo_exp", *TINY, "tuner.max_trials=1", "trainer.epochs=25",
            "trainer.early_stopping_patience=null", f"tuner.directory={tmp_path}/search"]
    code, first = signal_in_trial(args, tmp_path, cache_dir, "trial 0 of at most 1", stop)
    _, search, trials = runs(tmp_path)
    if stop == signal.SIGTERM:
        assert code == 143 and "interrupted (SIGTERM)" in first, first[-3000:]
        assert [r.info.status for r in search] == ["KILLED"] and [t.info.status for t in trials] == ["KILLED"]
        return
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


@pytest.mark.slow
def test_an_interrupted_distributed_search_stops_cleanly_and_resumes(tmp_path, cache_dir):
    """Ctrl-C to the launcher reaches the chief and both workers; the same --dir then finishes."""
    cmd = [sys.executable, "-m", "histo_exp.launch", "--workers", "2", "--dir", str(tmp_path / "dist"),
           *TINY, "tuner.max_trials=4", "trainer.epochs=30", "trainer.early_stopping_patience=null"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(cache_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 480
    for line in proc.stdout:  # the first epoch of the first trial, 29 to go
        lines.append(line)
        if "/step" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    first = "".join(lines) + out
    assert proc.returncode == 130 and "resume with --dir" in first, first[-3000:]
    left = subprocess.run(["pgrep", "-f", f"tuner.directory={tmp_path}/dist"], capture_output=True, text=True)
    assert left.stdout == ""  # neither the chief nor a worker outlives the launcher
    _, search, trials = runs(tmp_path)
    assert [r.info.status for r in search] == ["KILLED"] and trials
    statuses = [(t.data.tags.get("histo_exp.trial_id"), t.info.status, t.data.tags.get("histo_exp.error")) for t in trials]
    assert all(t.info.status == "KILLED" for t in trials), (statuses, first[-3000:])

    again = subprocess.run([*cmd, "trainer.epochs=2"], cwd=tmp_path, env=cli_env(cache_dir), capture_output=True,
                           text=True, timeout=600)  # the retried trials need not run their 30 epochs
    assert again.returncode == 0, again.stdout[-4000:]
    changed = [line for line in again.stdout.splitlines() if "changed settings" in line]
    assert changed and "trainer.epochs: 30 -> 2" in changed[0]
    assert "tuner.distributed" not in changed[0]  # a new port and session are not a change
    _, search_after, trials = runs(tmp_path)
    assert [(r.info.run_id, r.info.status) for r in search_after] == [(search[0].info.run_id, "FINISHED")]
    finished = Counter(t.data.tags["histo_exp.trial_id"] for t in trials if t.info.status == "FINISHED")
    assert finished == {"0": 1, "1": 1, "2": 1, "3": 1}
