"""``python -m histo_exp.prepare``: index and cache only, no training, the same cache a search reuses."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import cli_env


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
    cards = sorted(tmp_path.rglob("dataset_card.csv"))  # the dataset card, in the Hydra output folder
    assert len(cards) == 1 and (cards[0].parent / "dataset_card.png").stat().st_size > 0, out[-3000:]
    assert f"dataset card: {cards[0].parent / 'dataset_card.png'}" in out
    assert cards[0].read_text().startswith("patient,split,n_0,n_1\n") and "\n90001," in cards[0].read_text()
    assert "identical images" not in out
    again = prepare()
    assert "reusing the decoded cache" in again.stdout + again.stderr


def linked_copies(source: Path, dest: Path, copies: int) -> Path:
    """``copies`` of every patch of ``source`` under new patient ids, hard-linked where the disk allows."""
    for folder in sorted(source.glob("*/[01]")):
        patient, label, names = folder.parent.name, folder.name, os.listdir(folder)
        for copy in range(copies):
            new = f"{copy + 1}{patient}"
            (dest / new / label).mkdir(parents=True)
            for name in names:
                target = dest / new / label / (new + name[len(patient):])
                try:
                    os.link(folder / name, target)
                except OSError:
                    shutil.copyfile(folder / name, target)
    return dest


def test_a_stop_while_decoding_ends_prepare_at_once_and_leaves_no_cache(tmp_path, tiny_root):
    """SIGTERM (a scheduler's stop) during the decode: exit 143 within seconds, not after the decode,
    and no cache or partial folder left behind."""
    root = linked_copies(tiny_root, tmp_path / "data", 200)  # 48,000 patches: seconds of decoding on one thread
    cache = tmp_path / "ingest"
    proc = subprocess.Popen(
        [sys.executable, "-m", "histo_exp.prepare", "data=idc", f"data.root={root}", f"data.cache_dir={cache}",
         "data.workers=1", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "decoding 48000 patches" in line:
                break
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out = "".join(lines) + proc.communicate(timeout=60)[0]
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 143 and took < 10, (proc.returncode, took, out[-3000:])
    assert "stopped (SIGTERM)" in out and "cache:" not in out
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == ["listings"]  # no cache, no partial
