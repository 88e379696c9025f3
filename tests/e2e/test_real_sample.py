"""The real IDC sample (../shared/data/idc-mini), where it is: a short search learns something."""

from __future__ import annotations

import pytest

from helpers import IDC_MINI, runs


@pytest.mark.skipif(not IDC_MINI.is_dir(), reason=f"the real IDC sample is absent ({IDC_MINI})")
def test_real_idc_sample_beats_chance(run_cli, tmp_path):
    done = run_cli([
        "data=idc", f"data.root={IDC_MINI}", "data.image_size=32", "tuner.max_trials=2",
        "trainer.epochs=2", "model.blocks=2", "model.filters=16", "trainer.verbose=2",
    ], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _, search, trials = runs(tmp_path)
    assert len(search) == 1 and len(trials) == 2
    assert search[0].data.metrics["best_val_auc"] > 0.6
    assert search[0].data.metrics["test_auc"] > 0.5
