"""The decoded uint8 cache: built once, reused, rebuilt on change or damage, never used half-written."""

import json
import logging
import os
import re
import shutil
import signal

import numpy as np
import pytest

from histo_exp import signals
from histo_exp.data.batches import PatchBatches
from histo_exp.data.cache import IMAGES, KEY, USABLE, ingest
from histo_exp.data.decode import decode
from histo_exp.data.index import index
from histo_exp.errors import EnvironmentFault


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


def _cut_images(folder):
    with open(folder / IMAGES, "r+b") as f:
        f.truncate(os.path.getsize(folder / IMAGES) // 3)


def _grow_images(folder):
    with open(folder / IMAGES, "ab") as f:
        f.write(b"\0" * 100)


def _scribble_usable(folder):  # the same size: only reading it tells
    usable = folder / USABLE
    usable.write_bytes(b"x" * usable.stat().st_size)


def _old_key(folder):
    stats = json.loads((folder / KEY).read_text())
    (folder / KEY).write_text(json.dumps({k: v for k, v in stats.items() if k not in ("format", "bytes")}))


@pytest.mark.parametrize("damage, why", [
    (_cut_images, "images.npy is .* bytes, not the .* it was written with"),
    (_grow_images, "images.npy is .* bytes, not the .* it was written with"),
    (lambda folder: (folder / USABLE).unlink(), "keep.npy is missing"),
    (lambda folder: (folder / KEY).unlink(), "its key.json is missing"),
    (lambda folder: (folder / KEY).write_text('{"finger'), "its key.json is unreadable"),
    (_old_key, "written by an older histo_exp"),
    (_scribble_usable, "it could not be read"),
])
def test_a_damaged_cache_is_rebuilt_with_a_log_line_saying_why(tiny_root, tmp_path, caplog, damage, why):
    """Before: a cut file gave ``mmap length is greater than file size`` on every run, naming no
    file; a folder without its key file was decoded again and then failed with ``Directory not empty``."""
    m = index(tiny_root)
    first = ingest(m, tmp_path, 50, progress=False)
    damage(first.folder)
    with caplog.at_level(logging.INFO, logger="histo_exp.data"):
        again = ingest(index(tiny_root), tmp_path, 50, progress=False)
    assert again.built and again.folder == first.folder
    said = [r.getMessage() for r in caplog.records if "building it again" in r.getMessage()]
    assert len(said) == 1 and str(first.folder) in said[0], caplog.text
    assert re.search(why, said[0]), said[0]
    assert np.array_equal(np.asarray(again.images), decode(m, 50, progress=False).images)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.folder.name, first.folder.name + ".lock"])
    assert not ingest(index(tiny_root), tmp_path, 50, progress=False).built  # whole again: reused


def test_a_bad_file_fixed_in_place_is_decoded_again(tiny_root, tmp_path, caplog):
    """Before: after "fix the files", the stale cache kept them skipped (a rewrite in place leaves
    the folder's time, and so the cache key, as it was)."""
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    m = index(root)
    bad = root / m.paths[7]
    good = bad.read_bytes()
    bad.write_bytes(good[:40])
    first = ingest(m, tmp_path / "c", 50, progress=False)
    assert list(first.skipped) == [m.paths[7]] and not first.usable[7]
    assert not ingest(index(root), tmp_path / "c", 50, progress=False).built  # nothing changed: reused
    bad.write_bytes(good)
    with caplog.at_level(logging.INFO, logger="histo_exp.data"):
        fixed = ingest(index(root), tmp_path / "c", 50, progress=False)
    assert fixed.built and fixed.folder == first.folder and fixed.skipped == {} and fixed.usable.all()
    assert f"1 of the 1 files it skipped changed since it was built, first {m.paths[7]}" in caplog.text


def test_a_damaged_cache_that_cannot_be_rebuilt_is_one_error_naming_the_folder(tiny_root, tmp_path, monkeypatch):
    first = ingest(index(tiny_root), tmp_path, 50, progress=False)
    (first.folder / KEY).unlink()

    def refuse(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "rename", refuse)  # a cache folder on a share this user may not change
    with pytest.raises(EnvironmentFault) as err:
        ingest(index(tiny_root), tmp_path, 50, progress=False)
    message = str(err.value)
    assert "\n" not in message and str(first.folder) in message and "delete the folder" in message
    assert "key.json is missing" in message and "Permission denied" in message


@pytest.fixture
def stop_after(monkeypatch):
    """Record a SIGTERM (its raise lost, as in a GC callback) once ``n`` files were read; counts reads."""
    import histo_exp.data.decode as decoding

    reads = []
    read = decoding._read

    def arm(n: int) -> list:
        def counted(path, color):
            reads.append(path)
            if len(reads) == n:
                signals._state.received.append(signal.SIGTERM)
            return read(path, color)

        monkeypatch.setattr(decoding, "_read", counted)
        monkeypatch.setattr(decoding, "SLICE", 16)
        return reads

    yield arm
    signals.reset()


def test_a_stop_during_decoding_ends_it_promptly_and_leaves_no_cache(tiny_root, tmp_path, stop_after):
    reads = stop_after(5)
    with pytest.raises(signals.Stopped):
        ingest(index(tiny_root), tmp_path, 50, workers=2, progress=False)
    assert len(reads) < 100  # the slices not started were not decoded (240 files in 15 slices)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []  # no folder, no partial
    signals.reset()
    assert ingest(index(tiny_root), tmp_path, 50, progress=False).built


def test_a_stop_in_the_last_slice_is_not_lost(tiny_root, stop_after):
    stop_after(240)  # the last file: the raise is lost and no slice is left to start
    with pytest.raises(signals.Stopped):
        decode(index(tiny_root), 50, workers=1, progress=False)
