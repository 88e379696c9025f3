"""bench/quality.py runs what its rows say: the candidates for data=idc's defaults on top of data=idc as it is,
the derived row from its parent's searches, the levers on top of every lever off."""

import sys

from helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import quality  # noqa: E402


def test_the_reference_is_the_seeds_own_search_and_a_derived_row_only_adds_its_final_step():
    search, ensemble = quality.by_name("search"), quality.by_name("search-ensemble-3")
    assert search.command(2) == ["data=idc", "data.test_fraction=0", "seed=2"]
    assert ensemble.command(2) == [*search.command(2), "eval.ensemble=3"] and ensemble.parent == "search"
    preset = quality.by_name("preset").command(1)
    assert preset == ["data=idc", "data.test_fraction=0", "seed=1", *quality.PRESET]
    long = quality.by_name("preset-long").command(1)
    assert long[:len(preset)] == preset and "trainer.epochs=15" in long
    five = quality.by_name("preset-ensemble-5").command(1)  # its own trials and ensemble, not the preset's
    assert "tuner.max_trials=5" in five and "tuner.max_trials=3" not in five and "eval.ensemble=3" not in five


def test_every_candidate_runs_the_same_5_seeds_against_the_search_and_comparisons_at_least_3():
    for row in quality.DEFAULTS:
        assert row.reference in (None, "search")
        assert row.seeds == quality.CANDIDATE_SEEDS or (row.code and len(row.seeds) >= 3)
    assert (REPO / "bench" / quality.by_name("search-a145b09").patch).exists()


def test_a_lever_row_changes_only_its_override_on_top_of_every_lever_off():
    gray = quality.by_name("gray").command(1)
    assert "data.color=gray" in gray and "data.color=rgb" not in gray
    assert "tuner.max_trials=1" in gray and "eval.ensemble=1" in gray


def test_the_report_pairs_a_row_with_its_reference_on_the_shared_seeds(tmp_path, monkeypatch):
    folds = [quality.Fold(0, ["8863", "8917"]), quality.Fold(1, ["8864", "8918"])]
    for row, seeds, shift in (("search", (1, 2, 3), 0.0), ("preset", (1, 2, 3, 4), 0.3)):
        for seed in seeds:
            for fold in folds:
                path = tmp_path / row / f"seed{seed}-fold{fold.index}.csv.gz"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_fold(path, fold, seed, shift)
    monkeypatch.setattr(quality, "RESULTS", tmp_path)
    monkeypatch.setattr(quality, "MIXED", ("8863", "8864"))
    monkeypatch.setattr(quality, "HERE", tmp_path)
    quality.write_report(folds)
    text = (tmp_path / "quality.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| preset | 1, 2, 3, 4 |"))
    assert "| search | 1, 2, 3 |" in row and "**better**" in row


def write_fold(path, fold, seed, shift):
    import gzip
    import json

    import numpy as np

    rng = np.random.default_rng(seed * 10 + fold.index)
    with gzip.open(path, "wt") as f:
        f.write("patient,label,prob_idc,predicted\n")
        for patient in fold.test:
            labels = [0, 1] * 40 if patient in ("8863", "8864") else [1] * 40
            for label in labels:
                prob = float(np.clip(0.5 + (0.05 + shift) * (label - 0.5) * 2 + rng.normal(0, 0.2), 0, 1))
                f.write(f"{patient},{label},{prob:.4f},{int(prob > 0.5)}\n")
    path.with_suffix("").with_suffix(".json").write_text(json.dumps(
        {"train_s": 60.0, "predict_s": 5.0, "commit": "abc1234", "machine": "test", "date": "2026-12-04"}))
