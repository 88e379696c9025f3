"""The golden search: one real ``python -m histo_exp`` run per session, read by every test that only
looks at what a search leaves behind (its console, its MLflow runs, its files)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import TINY, cli_env, runs

# MLflow samples system metrics every logger.system_metrics_interval seconds and logs nothing for a
# run that ends before its first sample: the golden search samples often enough to outlive that.
GOLDEN = [*TINY, "logger.system_metrics_interval=0.5"]


@dataclass
class Golden:
    """The folder the search ran in, its console output, and its runs read back from the store."""

    folder: Path
    output: str
    client: object
    search: object
    trials: list


@pytest.fixture(scope="session")
def golden(tmp_path_factory, cache_dir) -> Golden:
    folder = tmp_path_factory.mktemp("golden")
    done = subprocess.run([sys.executable, "-m", "histo_exp", *GOLDEN], cwd=folder, env=cli_env(cache_dir),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    client, search, trials = runs(folder)
    assert len(search) == 1, [r.info.run_id for r in search]
    return Golden(folder, done.stdout + done.stderr, client, search[0], trials)
