"""The package installed as a wheel, run from another folder: its configs travel with it."""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO, cli_env


def test_the_module_runs_when_installed_outside_the_repo(tmp_path):
    """Hydra's config_path trap: a wheel install must find its configs from any folder."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                    "-q", "--target", str(target), str(REPO)], check=True, capture_output=True)
    assert not (target / "histo_exp" / "conf").is_symlink()
    done = subprocess.run(
        [sys.executable, "-m", "histo_exp", "--cfg", "job", "data=idc"],
        cwd=tmp_path, env={**cli_env(tmp_path), "PYTHONPATH": str(target)},
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "keras.optimizers.Adam" in done.stdout
    assert "source: idc" in done.stdout and "port: 8000" in done.stdout  # conf/data, and a nested folder too
