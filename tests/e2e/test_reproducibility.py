"""The same seed gives the same split and the same test AUC (CPU)."""

from histo_exp import runner


def test_same_seed_same_split_and_test_auc(compose_cfg, tmp_path):
    results = []
    for attempt in range(2):
        cfg = compose_cfg("debug=fast", "tuner.max_trials=2", "trainer.epochs=2", "trainer.verbose=0",
                          "data.synthetic.patients=6", "data.synthetic.patches_per_patient=40",
                          "logger=none", f"paths.output_dir={tmp_path}/run{attempt}")
        metrics = runner.run(cfg)
        results.append((metrics, (tmp_path / f"run{attempt}" / "split.csv").read_text()))
    (first, split_a), (second, split_b) = results
    assert split_a == split_b
    assert round(first["test_auc"], 4) == round(second["test_auc"], 4)
    assert round(first["best_val_auc"], 4) == round(second["best_val_auc"], 4)
