"""Whole searches: one whose every trial goes NaN says so in one line (tests/unit/test_tracked_tuner.py has the
single failed and NaN trials, with fakes); what a search records about skipped files, the registry's champion,
and training in mixed precision."""

import re

import pytest
from mlflow.tracking import MlflowClient

from histo_exp import runner

from helpers import TINY, flat_layers, predict, runs, saved_model_test_auc

# SGD at a learning rate of 1e30 makes the tiny CNN's training loss NaN at its second step; at 1e6 the
# training loss stays finite (about 1e30) in the first epoch, but the validation loss is NaN.
ABSURD_LR = ["optimizer=sgd", "optimizer.learning_rate=1e30", "optimizer.momentum=0.9"]


def test_a_search_whose_every_trial_went_nan_ends_with_one_line_that_says_what_to_try(run_cli, tmp_path):
    done = run_cli([*TINY, *ABSURD_LR, "tuner.max_consecutive_failed_trials=2", "trainer.epochs=3",
                    "trainer.verbose=0", "logger.system_metrics=false"])
    assert done.returncode == 1 and "Traceback" not in done.stderr  # NothingToKeep: the environment's family
    lines = [line for line in done.stderr.splitlines() if line.startswith("every trial failed")]
    assert len(lines) == 1, done.stderr[-3000:]
    assert re.fullmatch(r"every trial failed \(2 trials, stopped at tuner.max_consecutive_failed_trials=2; the last "
                        r"one: loss became NaN at epoch 1\), so there is no model to keep: a NaN or infinite "
                        r"loss mostly means too high a learning rate: lower optimizer.learning_rate .*check the data",
                        lines[0]), lines[0]
    assert "Input contains NaN" not in done.stdout + done.stderr
    client, [search], trials = runs(tmp_path)
    assert search.info.status == "FAILED" and search.data.tags["histo_exp.error"] == lines[0]
    assert [t.info.status for t in trials] == ["FAILED", "FAILED"]
    assert all(t.data.tags["histo_exp.error"] == "loss became NaN at epoch 1" for t in trials)
    # TerminateOnNaN stopped each at the NaN batch: one epoch of the three.
    assert [len(client.get_metric_history(t.info.run_id, "loss")) for t in trials] == [1, 1]


def test_skipped_files_are_reported_on_the_search_run(compose_cfg, tiny_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    broken = sorted((root / "90002" / "1").iterdir())[0]
    broken.write_bytes(b"not a png")
    cfg = compose_cfg("data=idc", f"data.root={root}", "data.image_size=32", "debug=fast",
                      "tuner.max_trials=1", "trainer.verbose=0", "trainer.steps_per_epoch=1")
    runner.run(cfg)
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("histo_exp").experiment_id],
                             "tags.`histo_exp.role` = 'search'")[0]
    report = client.download_artifacts(run.info.run_id, "skipped.tsv", str(tmp_path))
    assert f"90002/1/{broken.name}\tunreadable" in open(report).read()


def test_registered_champion_is_the_best_validation_model_and_predicts(compose_cfg, tiny_root, tmp_path):
    cfg_args = ["debug=fast", "tuner.max_trials=1", "trainer.verbose=0", "eval.bootstrap=20",
                "data.synthetic.patients=6", "data.synthetic.patches_per_patient=40",
                "logger.register_model=true", "logger.registered_model_name=idc-test"]
    cfg = compose_cfg(*cfg_args)
    first = runner.run(cfg)
    # Its own folder (the same one would resume the finished search), the same data, another model.
    second = runner.run(compose_cfg(*cfg_args, "trainer.epochs=2", f"paths.output_dir={tmp_path}/out2"))
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    versions = {str(v.version): v for v in client.search_model_versions("name = 'idc-test'")}
    assert sorted(versions) == ["1", "2"] and all(v.run_id for v in versions.values())
    aucs = {k: float(v.tags["histo_exp.val_auc"]) for k, v in versions.items()}
    # Each version is its search run's model, tagged with that run's validation (not test) AUC.
    assert aucs == pytest.approx({"1": first["best_val_auc"], "2": second["best_val_auc"]})
    for k, v in versions.items():
        assert client.get_run(v.run_id).data.metrics["best_val_auc"] == pytest.approx(aucs[k])
    assert versions["1"].run_id != versions["2"].run_id
    best = "2" if aucs["2"] > aucs["1"] else "1"  # a tie keeps the earlier champion
    assert str(client.get_model_version_by_alias("idc-test", "champion").version) == best

    table = predict(["model=models:/idc-test@champion", f"input={tiny_root}", f"output={tmp_path}/p.csv",
                     f"tracking_uri={cfg.logger.tracking_uri}"]).read_text().splitlines()
    assert len(table) == 1 + 240
    assert all(row.endswith(",") and row.split(",")[4] for row in table[1:])  # every patch predicted


def test_mixed_bfloat16_trains_end_to_end(compose_cfg):
    import keras

    cfg = compose_cfg("debug=fast", "tuner.max_trials=1", "trainer.verbose=0", "logger=none",
                      "eval.bootstrap=20", "trainer.precision=mixed_bfloat16",
                      "data.synthetic.patients=6", "data.synthetic.patches_per_patient=40")
    metrics = runner.run(cfg)
    # The same batches as the evaluation (bfloat16 rounding could differ with another batching).
    recomputed = saved_model_test_auc(cfg.paths.output_dir, cfg.data.root, int(cfg.trainer.batch_size))
    assert metrics["test_auc"] == pytest.approx(recomputed, abs=1e-3)
    model = keras.models.load_model(f"{cfg.paths.output_dir}/best_model.keras", compile=False)
    conv = next(layer for layer in flat_layers(model) if isinstance(layer, keras.layers.Conv2D))
    assert conv.dtype_policy.name == "mixed_bfloat16" and conv.compute_dtype == "bfloat16"
    assert model.layers[-1].dtype_policy.name == "float32"
