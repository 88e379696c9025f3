"""A trial that fails (an error, a NaN loss) is recorded as FAILED with its reason, and the search goes on;
a search whose every trial failed says so in one line; class weights, skipped files, the registered
champion and mixed precision, through ``runner.run``."""

import math
import re
import traceback

import keras_tuner as kt
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from histo_exp import build, runner
from histo_exp.model.hypermodel import SpaceHyperModel
from histo_exp.tuning.failures import fail_if_non_finite, failure_reason, non_finite, trial_error

from helpers import TINY, flat_layers, predict, runs, saved_model_test_auc

# SGD at a learning rate of 1e30 makes the tiny CNN's training loss NaN at its second step; at 1e6 the
# training loss stays finite (about 1e30) in the first epoch, but the validation loss is NaN.
ABSURD_LR = ["optimizer=sgd", "optimizer.learning_rate=1e30", "optimizer.momentum=0.9"]
# One fixed network and a learning rate of 0.01 or 1e6: exactly two trials, one of which goes NaN.
ONE_ABSURD_LR = ["optimizer=sgd", "~optimizer.learning_rate", "+optimizer.learning_rate={choice: [0.01, 1e6]}",
                 "optimizer.momentum=0.9", "model.blocks=1", "model.filters=8", "model.kernel_size=3",
                 "model.activation=relu", "model.dense_units=[16,16,16]"]


class FirstFitFails(SpaceHyperModel):
    """Fails the first trial the way an out-of-memory or NaN blow-up would."""

    calls = 0

    def fit(self, hp, model, *args, **kwargs):
        type(self).calls += 1
        if type(self).calls == 1:
            raise RuntimeError("simulated: out of memory while training")
        return super().fit(hp, model, *args, **kwargs)


@pytest.mark.slow
def test_failed_trial_is_recorded_and_the_search_goes_on(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "SpaceHyperModel", FirstFitFails)
    FirstFitFails.calls = 0
    cfg = compose_cfg("debug=fast", "tuner.max_trials=3", "trainer.verbose=0",
                      "data.synthetic.patients=6", "data.synthetic.patches_per_patient=40")
    metrics = runner.run(cfg)
    # The best of the finished trials was evaluated on the test patients of split.csv.
    assert metrics["test_auc"] == pytest.approx(saved_model_test_auc(cfg.paths.output_dir, cfg.data.root),
                                                abs=1e-4)

    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    exp = client.get_experiment_by_name("histo_exp")
    found = client.search_runs([exp.experiment_id])
    trials = {r.data.tags["histo_exp.trial_id"]: r for r in found
              if r.data.tags.get("histo_exp.role") == "trial"}
    assert len(trials) == 3
    failed = [r for r in trials.values() if r.info.status == "FAILED"]
    assert len(failed) == 1
    assert "simulated: out of memory" in failed[0].data.tags["histo_exp.error"]
    assert "val_auc" not in failed[0].data.metrics
    assert sum(r.info.status == "FINISHED" for r in trials.values()) == 2
    search = [r for r in found if r.data.tags.get("histo_exp.role") == "search"]
    assert len(search) == 1 and search[0].info.status == "FINISHED"
    assert search[0].data.metrics["test_auc"] == pytest.approx(metrics["test_auc"])
    best = max(r.data.metrics["val_auc"] for r in trials.values() if r.info.status == "FINISHED")
    assert search[0].data.metrics["best_val_auc"] == pytest.approx(best)

    from histo_exp.tuning.trials import from_tuner_dir, trials_csv

    rows = from_tuner_dir(tmp_path / "out" / "tuner")
    assert sorted(r["status"] for r in rows) == ["COMPLETED", "COMPLETED", "FAILED"]
    text = trials_csv(rows).splitlines()
    assert text[0].startswith("trial,status,val_auc,") and len(text) == 4


@pytest.mark.slow
def test_all_trials_failing_is_an_error_that_says_so(compose_cfg, monkeypatch):
    class AlwaysFails(SpaceHyperModel):
        def fit(self, *args, **kwargs):
            raise RuntimeError("simulated failure")

    monkeypatch.setattr(runner, "SpaceHyperModel", AlwaysFails)
    cfg = compose_cfg("debug=fast", "tuner.max_trials=2", "trainer.verbose=0", "logger=none",
                      "tuner.max_consecutive_failed_trials=5",
                      "data.synthetic.patients=6", "data.synthetic.patches_per_patient=40")
    with pytest.raises(RuntimeError, match=r"^every trial failed \(2 trials; the last one: RuntimeError: simulated "
                       r"failure\), so there is no model to keep: each trial's error is in the log above"):
        runner.run(cfg)


def test_a_nan_or_infinite_value_is_named_with_its_epoch_and_fold():
    assert non_finite({"loss": [0.7, 0.6], "val_auc": [0.8, 0.9]}) is None
    nan, inf = float("nan"), float("inf")
    assert non_finite({"loss": [0.7, inf, nan], "val_loss": [0.6, nan, 1.0]}) == "loss became infinite at epoch 2"
    assert non_finite({"loss": [0.7, 0.6], "val_auc": [0.8, nan]}) == "val_auc became NaN at epoch 2"
    fail_if_non_finite({"loss": [0.7]})
    with pytest.raises(kt.errors.FailedTrialError, match=r"^loss became NaN at epoch 1 \(fold 2 of 3\)$"):
        fail_if_non_finite({"loss": [nan]}, fold=1, folds=3)


def test_a_failed_trial_says_why_in_one_line():
    """KerasTuner keeps a failed trial's traceback; a deliberate failure (FailedTrialError) is its reason alone."""
    def traceback_of(error: Exception) -> str:
        try:
            raise error
        except Exception:
            return traceback.format_exc()

    deliberate = traceback_of(kt.errors.FailedTrialError("loss became NaN at epoch 2"))
    crash = traceback_of(RuntimeError("out of memory"))
    assert failure_reason(deliberate) == trial_error(deliberate) == "loss became NaN at epoch 2"
    assert failure_reason(crash) == "RuntimeError: out of memory" and trial_error(crash) == crash
    assert failure_reason(None) == "no error recorded" and trial_error(None) is None


@pytest.mark.slow
def test_nan_trials_fail_and_the_search_keeps_the_others(compose_cfg, caplog):
    """tuner.seed=1 has the random tuner try 0.01 first; tuner.max_consecutive_failed_trials=1 makes
    KerasTuner stop the search at the NaN trial, after which the finished trial is kept all the same."""
    cfg = compose_cfg(*TINY, *ONE_ABSURD_LR, "tuner=random", "tuner.seed=1", "tuner.max_consecutive_failed_trials=1",
                      "trainer.epochs=2", "trainer.verbose=0", "eval.bootstrap=20", "logger.system_metrics=false")
    metrics = runner.run(cfg)

    client, [search], trials = runs(cfg.paths.work_dir)
    by_lr = {float(t.data.params["learning_rate"]): t for t in trials}
    assert sorted(by_lr) == [0.01, 1e6]
    finished, nan = by_lr[0.01], by_lr[1e6]
    assert finished.info.start_time < nan.info.start_time, "the test expects tuner.seed=1 to try 0.01 first"
    assert nan.info.status == "FAILED" and nan.data.tags["histo_exp.error"] == "val_loss became NaN at epoch 1"
    # Training stopped at the epoch whose validation loss was NaN (the training loss was still finite).
    assert [len(client.get_metric_history(t.info.run_id, "val_loss")) for t in (finished, nan)] == [2, 1]
    assert finished.info.status == "FINISHED" and 0 <= finished.data.metrics["val_auc"] <= 1
    assert "histo_exp.error" not in finished.data.tags
    assert search.info.status == "FINISHED" and "histo_exp.error" not in search.data.tags
    assert metrics["best_val_auc"] == pytest.approx(finished.data.metrics["val_auc"])
    assert math.isfinite(metrics["test_auc"])
    assert search.data.metrics["test_auc"] == pytest.approx(metrics["test_auc"])

    failed_line = next(r.getMessage() for r in caplog.records if " failed: " in r.getMessage())
    assert re.match(rf"trial {nan.data.tags['histo_exp.trial_id']} failed: val_loss became NaN at epoch 1 "
                    rf"\(best so far [0-9.]+, trial {finished.data.tags['histo_exp.trial_id']}\)  "
                    r"\[learning_rate=1e\+06\]$", failed_line)
    stopped = "the search stopped early at tuner.max_consecutive_failed_trials=1"
    assert any(stopped in r.getMessage() for r in caplog.records)
    from histo_exp.tuning.trials import from_tuner_dir

    statuses = {r["learning_rate"]: r["status"] for r in from_tuner_dir(f"{cfg.paths.output_dir}/tuner")}
    assert statuses == {0.01: "COMPLETED", 1e6: "FAILED"}


@pytest.mark.slow
def test_a_search_whose_every_trial_went_nan_ends_with_one_line_that_says_what_to_try(run_cli, tmp_path):
    done = run_cli([*TINY, *ABSURD_LR, "tuner.max_consecutive_failed_trials=2", "trainer.epochs=3",
                    "trainer.verbose=0", "logger.system_metrics=false"])
    assert done.returncode != 0
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


def test_auto_class_weights_balance_the_training_split(compose_cfg, tiny_root):
    from histo_exp.data.dataset import load

    data = load(compose_cfg("data=idc", f"data.root={tiny_root}", "data.image_size=32").data, progress=False)
    weights = build.class_weight(data, "auto")
    counts = np.bincount(data.labels[data.split.train], minlength=2)
    assert weights[0] * counts[0] == pytest.approx(weights[1] * counts[1])
    assert (weights[0] * counts[0] + weights[1] * counts[1]) == pytest.approx(counts.sum())
    assert build.class_weight(data, "none") is None


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
