"""``python -m histo_exp.prepare``: index and cache only, no training, the same cache a search reuses."""

import subprocess
import sys

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
    again = prepare()
    assert "reusing the decoded cache" in again.stdout + again.stderr
