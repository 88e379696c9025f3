"""data=pcam: PatchCamelyon's HDF5 files as published, plain or gzipped, into the uint8 cache."""

from __future__ import annotations

import errno
import gzip
import os
import shutil
import signal
import threading
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from test_data import data_cfg
from tqdm import TMonitor

from histo_exp import signals
from histo_exp.data import cache_arrays, pcam, sources
from histo_exp.data.cache import ingest
from histo_exp.data.dataset import load
from histo_exp.data.index import DatasetError
from histo_exp.settings import Data
from histo_exp.settings.fields import build
from histo_exp.space import to_plain

ROWS = {"train": 40, "valid": 12, "test": 12}
NAME = "camelyonpatch_level_2_split_{}_{}"


def ours() -> set[threading.Thread]:
    """The threads alive, less tqdm's monitor (started by the process's first bar, and kept)."""
    return {t for t in threading.enumerate() if not isinstance(t, TMonitor)}


def write_pcam(root: Path, rows: dict[str, int] = ROWS, gz: bool = False, chunked: bool = False,
               seed: int = 0) -> dict[str, np.ndarray]:
    """PCam's nine files with the real datasets' names, dtypes and shapes (small N), three slides per
    part; returns each part's images."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = {}
    for part, n in rows.items():
        x = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        y = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1)
        write_h5(root / f"{NAME.format(part, 'x')}.h5", "x", x, gz, chunks=(1, 96, 96, 3) if chunked else None)
        write_h5(root / f"{NAME.format(part, 'y')}.h5", "y", y, gz)
        write_meta(root / f"{NAME.format(part, 'meta')}.csv", part, n)
        images[part] = x
    return images


def write_h5(path: Path, key: str, data: np.ndarray, gz: bool = False, chunks=None) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=data, chunks=chunks)
    if gz:  # the whole file gzipped, as published
        with open(path, "rb") as src, gzip.open(f"{path}.gz", "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst)
        path.unlink()


def write_meta(path: Path, part: str, n: int) -> None:
    """As published: an unnamed index column first."""
    lines = [",coord_y,coord_x,tumor_patch,center_tumor_patch,wsi"]
    lines += [f"{i},{1000 + i},{2000 + 2 * i},{i % 2 == 1},{i % 2 == 1},camelyon16_{part}_{i % 3:03d}"
              for i in range(n)]
    path.write_text("\n".join(lines) + "\n")


def cfg_for(root: Path, **extra) -> Data:
    return build(Data, data_cfg(root, **{"source": "pcam", "name": "pcam", "image_size": 96, **extra}), "data")


def read(root: Path, **extra):
    return pcam.read(cfg_for(root, **extra), progress=False)


def test_read_gives_the_benchmark_parts_slides_and_classes(tmp_path):
    write_pcam(tmp_path / "pcam")
    m = sources.read(cfg_for(tmp_path / "pcam"), progress=False)
    assert m.classes == ("normal", "tumour") and len(m) == 64
    assert m.paths[:2] == ["train/000000", "train/000001"] and m.paths[40] == "val/000000"
    assert [int((m.parts == p).sum()) for p in ("train", "val", "test")] == [40, 12, 12]
    assert m.patients[0] == "camelyon16_train_000" and m.patients[41] == "camelyon16_valid_001"
    assert set(m.patients[m.parts == "test"]) == {f"camelyon16_test_{i:03d}" for i in range(3)}
    assert m.labels.dtype == np.int8 and m.labels[:4].tolist() == [0, 1, 0, 1]
    assert (m.x[:2].tolist(), m.y[:2].tolist()) == ([2000, 2002], [1000, 1001])
    assert len(m.stamps) == 18  # the nine files' sizes and times


def test_gzipped_files_are_streamed_and_a_plain_file_wins(tmp_path):
    root = tmp_path / "pcam"
    images = write_pcam(root, gz=True)
    m = read(root)
    chunks = list(m.pixels())
    assert np.array_equal(np.concatenate([c for _, c in chunks]), np.concatenate(list(images.values())))
    assert np.array_equal(np.concatenate([r for r, _ in chunks]), np.arange(64))
    assert m.labels[:4].tolist() == [0, 1, 0, 1]
    assert not (tmp_path / "ingest" / "pcam-unzipped").exists()  # contiguous: nothing unzipped
    write_h5(root / f"{NAME.format('train', 'y')}.h5", "y", np.ones((40, 1, 1, 1), np.uint8))
    assert read(root).labels[:40].tolist() == [1] * 40


def test_a_chunked_gzipped_file_is_unzipped_once(tmp_path, caplog):
    root = tmp_path / "pcam"
    images = write_pcam(root, gz=True, chunked=True)
    with caplog.at_level("INFO", logger="histo_exp.data.gzip_files"):
        m = read(root)
    assert sum("unzipping" in r.getMessage() for r in caplog.records) == 3
    copies = sorted((tmp_path / "ingest" / "pcam-unzipped").glob("*/*.h5"))
    assert len(copies) == 3 and not list(copies[0].parent.glob(".*tmp"))
    assert np.array_equal(np.concatenate([c for _, c in m.pixels()]), np.concatenate(list(images.values())))
    caplog.clear()
    with caplog.at_level("INFO", logger="histo_exp.data.gzip_files"):
        read(root)
    assert not any("unzipping" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("damage", "says"), [
    (lambda r: (r / f"{NAME.format('valid', 'meta')}.csv").unlink(), "has no camelyonpatch_level_2_split_valid_meta.csv"),
    (lambda r: (r / f"{NAME.format('test', 'x')}.h5").unlink(), "has no camelyonpatch_level_2_split_test_x.h5 (nor"),
    (lambda r: write_h5(r / f"{NAME.format('train', 'y')}.h5", "y", np.zeros((39, 1, 1, 1), np.uint8)),
     "train_y.h5 has 39 rows but camelyonpatch_level_2_split_train_x.h5 has 40"),
    (lambda r: write_meta(r / f"{NAME.format('test', 'meta')}.csv", "test", 11), "test_meta.csv has 11 rows"),
    (lambda r: write_h5(r / f"{NAME.format('train', 'x')}.h5", "x", np.zeros((40, 96, 96, 3), np.float32)),
     "dataset 'x' is float32 (40, 96, 96, 3), not uint8"),
    (lambda r: write_h5(r / f"{NAME.format('valid', 'y')}.h5", "labels", np.zeros((12, 1, 1, 1), np.uint8)),
     "no dataset 'y'"),
    (lambda r: (r / f"{NAME.format('valid', 'x')}.h5").write_bytes(b"not hdf5"), "not a readable HDF5 file"),
    (lambda r: (r / f"{NAME.format('valid', 'meta')}.csv").write_text(",a,b\n0,1,2\n"), "no column coord_y"),
])
def test_damaged_or_missing_files_are_one_line_errors(tmp_path, damage, says):
    write_pcam(tmp_path / "pcam")
    damage(tmp_path / "pcam")
    with pytest.raises(DatasetError) as err:
        read(tmp_path / "pcam")
    assert says in str(err.value) and "\n" not in str(err.value)


def test_ingest_copies_the_pixels_and_reuses_the_cache(tmp_path):
    root = tmp_path / "pcam"
    images = np.concatenate(list(write_pcam(root).values()))
    cached = ingest(read(root), tmp_path / "cache", 96, progress=False)
    assert cached.built and cached.usable.all() and cached.skipped == {}
    assert np.array_equal(np.asarray(cached.images), images)
    assert (cached.folder / "skipped.tsv").read_text() == ""
    again = ingest(read(root), tmp_path / "cache", 96, progress=False)
    assert not again.built and again.folder == cached.folder
    stamp = os.stat(root / f"{NAME.format('test', 'y')}.h5")
    os.utime(root / f"{NAME.format('test', 'y')}.h5", ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    assert ingest(read(root), tmp_path / "cache", 96, progress=False).folder != cached.folder


@pytest.mark.parametrize("kernel", ["refused", "absent"])
def test_plain_files_are_copied_through_python_where_the_kernel_cannot(tmp_path, monkeypatch, kernel):
    root = tmp_path / "pcam"
    images = np.concatenate(list(write_pcam(root).values()))
    m = read(root)
    assert [e[1:4] for e in m.pixels.extents][1:] == [(2048, 40, 12), (2048, 52, 12)]  # h5py's offset

    def refused(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    if kernel == "refused":
        monkeypatch.setattr(os, "copy_file_range", refused)
    else:
        monkeypatch.delattr(os, "copy_file_range")
    monkeypatch.setattr(cache_arrays, "KERNEL_PIECE", 5000)  # pieces that split rows
    assert np.array_equal(np.asarray(ingest(m, tmp_path / "cache", 96, progress=False).images), images)


def test_plain_files_read_in_chunks_where_not_stored_plainly(tmp_path, monkeypatch):
    root = tmp_path / "pcam"
    images = np.concatenate(list(write_pcam(root, chunked=True).values()))
    m = read(root)
    assert m.pixels.extents is None
    assert np.array_equal(np.asarray(ingest(m, tmp_path / "cache", 96, progress=False).images), images)


def test_ingest_from_gzipped_files_in_small_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(pcam, "CHUNK", 7)  # chunks that do not divide the parts
    root = tmp_path / "pcam"
    images = np.concatenate(list(write_pcam(root, gz=True).values()))
    assert np.array_equal(np.asarray(ingest(read(root), tmp_path / "cache", 96, progress=False).images), images)


def test_another_image_size_is_resized_as_decoded_patches_are(tmp_path):
    root = tmp_path / "pcam"
    images = np.concatenate(list(write_pcam(root).values()))
    cached = ingest(read(root, image_size=48), tmp_path / "cache", 48, progress=False)
    assert cached.images.shape == (64, 48, 48, 3) and cached.resized == 64 and cached.usable.all()
    assert np.array_equal(np.asarray(cached.images[5]), cv2.resize(images[5], (48, 48), interpolation=cv2.INTER_AREA))
    dropped = ingest(read(root), tmp_path / "cache", 128, small_patches="drop", progress=False)
    assert not dropped.usable.any() and len(dropped.skipped) == 64
    padded = ingest(read(root), tmp_path / "cache", 128, progress=False)
    assert padded.padded == 64 and np.array_equal(np.asarray(padded.images[3, :96, :96]), images[3])
    assert (np.asarray(padded.images[3, 96:]) == 255).all()


def test_a_read_that_fails_midway_fails_the_ingest_and_leaves_no_thread(tmp_path):
    root = tmp_path / "pcam"
    write_pcam(root)
    m = read(root)
    chunks = m.pixels

    def broken():
        it = chunks()
        yield next(it)
        raise DatasetError("rows 40 to 52 cannot be read")

    m.pixels = broken
    before = ours()
    with pytest.raises(DatasetError, match="cannot be read"):
        ingest(m, tmp_path / "cache", 96, progress=False)
    assert ours() == before
    assert not list((tmp_path / "cache").glob("pcam-*/key.json"))


def test_a_stop_during_the_copy_ends_it_and_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(pcam, "CHUNK", 4)  # 16 chunks: a copy that ran on to the end would read them all
    root = tmp_path / "pcam"
    write_pcam(root)
    m = read(root)
    chunks, given = m.pixels, []

    def stopped_after_one():
        for chunk in chunks():
            given.append(chunk)
            signals._state.received.append(signal.SIGTERM)  # as the handler records a stop whose raise was lost
            yield chunk

    m.pixels = stopped_after_one
    before = ours()
    try:
        with pytest.raises(signals.Stopped):
            ingest(m, tmp_path / "cache", 96, progress=False)
    finally:
        signals.reset()
    # The copy takes at most the chunk the stop came with; the reader, one chunk ahead, may have one
    # more in its queue and be reading a third when it sees the stop: never more, however threads run.
    assert len(given) <= 3 and ours() == before
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_load_keeps_the_benchmark_split(tmp_path):
    write_pcam(tmp_path / "pcam")
    data = load(data_cfg(tmp_path / "pcam", source="pcam", name="pcam", image_size=96), progress=False)
    assert [getattr(data.split, p).tolist() for p in ("train", "val", "test")] == \
        [list(range(40)), list(range(40, 52)), list(range(52, 64))]
    assert data.classes == ("normal", "tumour") and data.input_shape == (96, 96, 3)


def test_the_pcam_config_group(compose_cfg, tmp_path):
    cfg = compose_cfg("data=pcam", f"data.root={tmp_path}")
    data = build(Data, to_plain(cfg.data), "data")
    assert (data.source, data.name, data.image_size, data.root) == ("pcam", "pcam", 96, str(tmp_path))
