"""Multiruns (`-m`) with each of Hydra's launchers: one search per job in one store."""

from __future__ import annotations

import pytest

from helpers import TINY, runs


@pytest.mark.parametrize("launcher, optimizers", [
    ("basic", ["adam", "rmsprop", "sgd"]),  # one after the other in this process: no job inherits a run or a role
    ("joblib", ["adam", "sgd"]),  # parallel processes on one SQLite store: two writers are the case
    ("ray", ["adam", "sgd"]),
])
def test_a_multirun_gives_one_search_per_job(run_cli, tmp_path, launcher, optimizers):
    """joblib and ray run the jobs in parallel processes on one SQLite store: no lock errors, no lost run."""
    done = run_cli(["-m", f"hydra/launcher={launcher}", f"optimizer={','.join(optimizers)}", *TINY,
                    "tuner.max_trials=1"], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _, search, trials = runs(tmp_path)
    assert sorted(r.data.params["optimizer.name"] for r in search) == optimizers
    assert all(r.info.status == "FINISHED" for r in search) and len(trials) == len(optimizers)
    assert len(list((tmp_path / "multirun").glob("*/*/*/best_model.keras"))) == len(optimizers)
    assert "database is locked" not in done.stderr + done.stdout
