"""The decoded uint8 cache: built once, reused, rebuilt on change, never used half-written."""

import logging
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from filelock import FileLock, Timeout

from histo_exp.data.batches import PatchBatches
from histo_exp.data.cache import IMAGES, KEY, ingest
from histo_exp.data.decode import decode
from histo_exp.data.index import index

from helpers import cli_env


def test_cache_is_built_once_then_reused_as_a_memory_map(tiny_root, tmp_path):
    m = index(tiny_root)
    first = ingest(m, tmp_path, 50, progress=False)
    again = ingest(index(tiny_root), tmp_path, 50, progress=False)
    assert first.built and not again.built and first.folder == again.folder
    assert isinstance(again.images, np.memmap) and again.images.dtype == np.uint8
    assert np.array_equal(np.asarray(again.images), decode(m, 50, progress=False).images)
    assert again.usable.all() and again.skipped == {}


def test_changed_settings_or_files_make_a_new_cache(tiny_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    base = ingest(index(root), tmp_path / "c", 32, progress=False)
    assert ingest(index(root), tmp_path / "c", 32, color="gray", progress=False).built
    assert ingest(index(root), tmp_path / "c", 32, small_patches="resize", progress=False).built
    victim = next((root / "90001" / "0").iterdir())
    victim.unlink()
    rebuilt = ingest(index(root), tmp_path / "c", 32, progress=False)
    assert rebuilt.built and rebuilt.folder != base.folder
    assert len(rebuilt.usable) == len(base.usable) - 1


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
    with caplog.at_level(logging.INFO, logger="histo_exp.data.publish"):
        cached = ingest(index(tiny_root), cache_dir, 50, progress=False)
    assert cached.built and cached.usable.all() and not partial.exists()
    assert "removed 1 partial folder(s)" in caplog.text and "MiB reclaimed" in caplog.text
    assert np.array_equal(np.asarray(cached.images), decode(index(tiny_root), 50, progress=False).images)
    assert not ingest(index(tiny_root), cache_dir, 50, progress=False).built


def test_memory_map_batches_equal_the_decoded_images(tiny_root, tmp_path):
    m = index(tiny_root)
    cached = ingest(m, tmp_path, 50, progress=False)
    idx = np.arange(0, len(m), 3)
    batches = PatchBatches(cached.images, m.labels, idx, 32)
    assert batches._rows is not None  # read from the cache file, not through the map
    x = np.concatenate([batches[i][0] for i in range(len(batches))])
    assert np.array_equal(x, decode(m, 50, progress=False).images[idx])
    shuffled = PatchBatches(cached.images, m.labels, idx, 32, shuffle=True, seed=4)
    in_memory = PatchBatches(np.array(cached.images), m.labels, idx, 32, shuffle=True, seed=4)
    assert all(np.array_equal(shuffled[i][0], in_memory[i][0]) for i in range(len(shuffled)))


def test_a_cache_file_cut_short_is_an_error_that_says_to_rebuild(tiny_root, tmp_path):
    m = index(tiny_root)
    cached = ingest(m, tmp_path, 50, progress=False)
    batches = PatchBatches(cached.images, m.labels, np.arange(len(m)), 16)
    with open(cached.folder / IMAGES, "r+b") as f:
        f.truncate(cached.images.offset + 10 * cached.images[0].nbytes)
    with pytest.raises(OSError, match="cut short; delete its folder"):
        batches[0]


@pytest.mark.slow
def test_prepare_indexes_and_caches_without_training(tmp_path, cache_dir):
    def prepare():
        return subprocess.run(
            [sys.executable, "-m", "histo_exp.prepare", "debug=fast"], cwd=tmp_path,
            env=cli_env(cache_dir), capture_output=True, text=True, timeout=600,
        )

    done = prepare()
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "class 0" in out and "class 1" in out and "cache:" in out and "MiB" in out
    assert "90001" in out  # the per-patient table
    assert "trial" not in out and not (tmp_path / "mlruns").exists()
    again = prepare()
    assert "reusing the decoded cache" in again.stdout + again.stderr
