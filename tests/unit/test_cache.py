"""The decoded uint8 cache: built once, reused, rebuilt on change, never used half-written."""

import shutil

import numpy as np
import pytest

from histo_exp.data.batches import PatchBatches
from histo_exp.data.cache import IMAGES, ingest
from histo_exp.data.decode import decode
from histo_exp.data.index import index


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
