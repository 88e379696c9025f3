"""Processes that race for the same thing (a cache, a folder, a store, a search) and one that dies holding it:
each thing is made once and whole, the waiters get it, and a dead holder blocks nobody."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock, Timeout

from histo_exp.data.build_once import build_folder, lock_path
from histo_exp.data.cache import IMAGES, KEY, ingest
from histo_exp.data.decode import decode
from histo_exp.data.index import index
from histo_exp.tuning.search_folder import SearchFolder

from helpers import cli_env, tracker

# A builder that records its pid, says it started, and finishes only when the test says so.
BUILDER = """
import logging, os, sys, time
from pathlib import Path
from histo_exp.data.build_once import build_folder
logging.basicConfig(level=logging.INFO)
final, work = Path(sys.argv[1]), Path(sys.argv[2])

def build(tmp):
    with open(work / "calls", "a") as f:
        f.write(f"{os.getpid()}\\n")
    tmp.mkdir()
    (work / "started").touch()
    deadline = time.monotonic() + 30
    while not (work / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    (tmp / "done").write_text(str(os.getpid()))

print("built" if build_folder(final, build, lambda p: (p / "done").exists()) else "reused")
"""


HOLDER = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1])  # kept: a collected FileLock releases itself
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def _wait_for(check, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _builder(final: Path, work: Path, name: str) -> subprocess.Popen:
    with open(work / f"{name}.err", "w") as err:
        return subprocess.Popen([sys.executable, "-c", BUILDER, str(final), str(work)],
                                stdout=subprocess.PIPE, stderr=err, text=True)


def test_two_processes_build_the_folder_once_and_the_other_waits_for_it(tmp_path):
    final, work = tmp_path / "cache" / "data-abc", tmp_path / "work"
    work.mkdir()
    first = _builder(final, work, "first")
    _wait_for(lambda: (work / "started").exists(), "the first build to start")
    second = _builder(final, work, "second")
    waiting = "waiting for another process that builds"
    _wait_for(lambda: waiting in (work / "second.err").read_text(), "the second process to wait")
    (work / "go").touch()
    outs = [p.communicate(timeout=20)[0].strip() for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], (work / "second.err").read_text()
    assert outs == ["built", "reused"]
    assert (work / "calls").read_text().split() == [str(first.pid)]
    assert (final / "done").read_text() == str(first.pid)
    assert (work / "second.err").read_text().count(waiting) == 1
    assert sorted(p.name for p in final.parent.iterdir()) == ["data-abc", "data-abc.lock"]


def test_partials_of_dead_builds_are_swept_and_reported(tmp_path, caplog):
    final = tmp_path / "data-abc"
    for name in ["data-abc.partial-otherhost-1", "data-abc.partial-thishost-2"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "images.npy").write_bytes(b"\0" * 2**20)
    kept = [tmp_path / "data-abcd.partial-h-3", tmp_path / "data-xyz.partial-h-4"]
    for p in kept:
        p.mkdir()
    with caplog.at_level(logging.INFO, logger="histo_exp.data.build_once"):
        assert build_folder(final, lambda tmp: tmp.mkdir(), lambda p: p.exists())
    assert not list(tmp_path.glob("data-abc.partial-*")) and all(p.exists() for p in kept)
    assert "removed 2 partial folder(s)" in caplog.text and "2.0 MiB reclaimed" in caplog.text


def test_a_complete_folder_is_reused_without_building(tmp_path):
    final = tmp_path / "data-abc"
    final.mkdir()
    assert not build_folder(final, lambda tmp: pytest.fail("built again"), lambda p: p.exists())


def test_a_held_lock_times_out_with_what_to_do_and_a_killed_holder_releases_it(tmp_path):
    final = tmp_path / "data-abc"
    with subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_path(final))],
                          stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout.readline().strip() == "held"
            start = time.monotonic()
            with pytest.raises(TimeoutError) as raised:
                build_folder(final, lambda tmp: pytest.fail("built under a held lock"),
                             lambda p: p.exists(), timeout_s=0.5)
            assert 0.5 <= time.monotonic() - start < 10
        finally:
            holder.kill()  # SIGKILL: the OS must release its lock
    message = str(raised.value)
    assert str(lock_path(final)) in message and str(final) in message
    assert f"if no process is doing that, delete {lock_path(final)}" in message
    assert build_folder(final, lambda tmp: tmp.mkdir(), lambda p: p.exists(), timeout_s=5)
    with FileLock(lock_path(final)).acquire(timeout=0):
        pass


def test_a_killed_ingest_leaves_no_usable_cache_and_the_next_sweeps_it(tiny_root, tmp_path, caplog):
    """SIGKILL (no clean-up runs) after 50 patches were decoded; the OS drops the build lock."""
    cache_dir, mid_build = tmp_path / "c", tmp_path / "mid-build"
    script = f"""
import pathlib, time
import histo_exp.data.cache as cache
import histo_exp.data.decode as decode
from histo_exp.data.index import index
real = decode._read
calls = []
def stalling(*a, **k):
    calls.append(1)
    if len(calls) == 50:
        pathlib.Path({str(mid_build)!r}).touch()
        time.sleep(60)
    return real(*a, **k)
decode._read = stalling
cache.ingest(index({str(tiny_root)!r}), {str(cache_dir)!r}, 50, workers=1, progress=False)
"""
    builder = subprocess.Popen([sys.executable, "-c", script], env=cli_env(tmp_path))
    try:
        deadline = time.monotonic() + 60
        while not mid_build.exists():
            assert builder.poll() is None and time.monotonic() < deadline, "the ingest never got mid-build"
            time.sleep(0.05)
        (lock,) = cache_dir.glob("*.lock")
        with pytest.raises(Timeout):
            FileLock(lock).acquire(timeout=0)
    finally:
        builder.send_signal(signal.SIGKILL)
    assert builder.wait(timeout=20) == -signal.SIGKILL
    with FileLock(lock).acquire(timeout=5):
        pass
    (partial,) = [p for p in cache_dir.iterdir() if p.is_dir()]
    assert ".partial-" in partial.name and (partial / IMAGES).exists() and not (partial / KEY).exists()
    with caplog.at_level(logging.INFO, logger="histo_exp.data.build_once"):
        cached = ingest(index(tiny_root), cache_dir, 50, progress=False)
    assert cached.built and cached.usable.all() and not partial.exists()
    assert "removed 1 partial folder(s)" in caplog.text and "MiB reclaimed" in caplog.text
    assert np.array_equal(np.asarray(cached.images), decode(index(tiny_root), 50, progress=False).images)
    assert not ingest(index(tiny_root), cache_dir, 50, progress=False).built


SAME_DATASET = """
import sys, time
from pathlib import Path
from histo_exp.tracking import MlflowTracker
store, ready, go = map(Path, sys.argv[1:])
t = MlflowTracker(f"sqlite:///{store}/mlflow.db", "histo_exp", system_metrics=False)
t.start_search({}, "", run_name="search")
ready.touch()
while not go.exists():
    time.sleep(0.01)
t.log_dataset("synthetic", "cf03d0d2db725028", "/data", {"train_patches": 1})
t.end_search("FINISHED")
"""


def test_parallel_searches_log_the_same_dataset_without_a_unique_constraint_error(tmp_path):
    """A multirun's launcher starts searches on the same data at once: they race to add its row."""
    tracker(tmp_path).start_search({}, "", run_name="create the store")
    go = tmp_path / "go"
    searches = [subprocess.Popen([sys.executable, "-c", SAME_DATASET, str(tmp_path), str(tmp_path / f"ready{i}"),
                                  str(go)], stderr=subprocess.PIPE, text=True) for i in range(6)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready*"))) < len(searches) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    errors = [search.communicate(timeout=120)[1] for search in searches]
    assert [search.returncode for search in searches] == [0] * 6, "\n".join(errors)
    client = tracker(tmp_path).client
    runs = client.search_runs([client.get_experiment_by_name("histo_exp").experiment_id],
                              "attributes.status = 'FINISHED'")
    assert len(runs) == 6 and all(len(run.inputs.dataset_inputs) == 1 for run in runs)


def _open_new_store(store: Path, go: Path) -> None:
    """One process of the race below: wait for the start, then open the store and log a search."""
    while not go.exists():
        time.sleep(0.001)
    t = tracker(store)
    t.start_search({}, "", run_name="search")
    t.end_search("FINISHED")


def test_processes_that_open_a_new_store_at_once_all_get_it(tmp_path):
    """Two runs started at once on a store that is not there yet: without the lock beside it, one of
    them died in MLflow's migrations in 3 of 3 tries (alembic "Online migration expected to match one
    row", "table ... already exists")."""
    import multiprocessing

    fork = multiprocessing.get_context("fork")  # histo_exp and MLflow are imported once, here
    for attempt in range(4):
        store, go = tmp_path / f"try{attempt}", tmp_path / f"go{attempt}"
        procs = [fork.Process(target=_open_new_store, args=(store, go)) for _ in range(3)]
        for p in procs:
            p.start()
        go.touch()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0, 0, 0], f"attempt {attempt}"
        client = tracker(store).client
        assert [e.name for e in client.search_experiments()].count("histo_exp") == 1
        assert len(client.search_runs([client.get_experiment_by_name("histo_exp").experiment_id])) == 3


def test_one_process_at_a_time_leads_a_search(tmp_path):
    folder = SearchFolder(tmp_path / "tuner")
    with folder.led():
        code = ("import sys; from pathlib import Path; from histo_exp.tuning.search_folder import SearchFolder\n"
                "with SearchFolder(Path(sys.argv[1])).led(): pass")
        other = subprocess.run([sys.executable, "-c", code, str(folder.path)], capture_output=True, text=True)
        # EnvironmentFault: a command says it in one line with exit 1 (errors.one_line_errors)
        assert "histo_exp.errors.EnvironmentFault: another process is running the search" in other.stderr
    with folder.led():  # free again once the holder is done
        pass


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
