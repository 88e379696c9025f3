"""Folders built once under a lock: one builder, waiters reuse its folder, dead builds swept, clear timeouts."""

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock

from histo_exp.data.publish import build_folder, lock_path

# A builder that records its pid, says it started, and finishes only when the test says so.
BUILDER = """
import logging, os, sys, time
from pathlib import Path
from histo_exp.data.publish import build_folder
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
    with caplog.at_level(logging.INFO, logger="histo_exp.data.publish"):
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
