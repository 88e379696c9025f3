"""``python -m histo_exp.evaluate``: a saved model scored on a labelled cohort it never saw, as a user runs it:
the metrics table with CIs by patient (and by site), figures, predictions and an evaluation run linked to the
model's search run; a cohort of other classes and a missing model in one line, writing nothing."""

import csv
import json
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from helpers import cli_env, search_with_model


def evaluate(args: list[str], cwd: Path, cache_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "histo_exp.evaluate", *args], cwd=cwd, env=cli_env(cache_dir),
                          capture_output=True, text=True, timeout=300)


def test_a_search_runs_model_scored_on_a_cohort_logs_an_evaluation_run_linked_to_it(tmp_path, tiny_root, keras_file,
                                                                                     cache_dir):
    store = tmp_path / "mlruns"  # the default store of a command run in tmp_path
    tracker, _ = search_with_model(store, keras_file)
    search = tracker.search_run_id
    tracker.end_search("FINISHED")
    done = evaluate([f"model={search}", "data=idc", f"data.root={tiny_root}", "output=ev", "eval.max_maps=2",
                     "eval.bootstrap=200", "logger.system_metrics=false"], tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr
    table = done.stdout
    assert "95% CI by patient (6)" in table and "by site" not in table
    auc = next(line for line in table.splitlines() if line.startswith("auc "))
    assert auc.count("[") == 1  # the value and its CI
    out = tmp_path / "ev"
    assert {"roc.png", "pr.png", "confusion.png", "predictions.csv", "metrics.json", "metrics.txt"} <= {
        p.name for p in out.iterdir()}
    assert len(list((out / "maps").iterdir())) == 2
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 240 and all(r["prob_idc"] and r["true_label"] in ("0", "1") for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_auc_ci_low"] <= metrics["test_auc"] <= metrics["test_auc_ci_high"]
    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("histo_exp").experiment_id],
                              "tags.`histo_exp.role` = 'evaluation'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["histo_exp.model_run"] == search
    assert run.data.metrics["test_auc"] == metrics["test_auc"] and run.data.params["classes"] == "no IDC, IDC"
    assert run.data.params["data.root"] == str(tiny_root)
    assert {"roc.png", "predictions.csv", "maps"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_sites_named_by_a_manifest_give_cis_by_site_too(tmp_path, tiny_root, keras_file, cache_dir):
    (tmp_path / "patches").symlink_to(tiny_root)
    lines = ["path,label,patient,site"]
    for i, patient in enumerate(sorted(p.name for p in tiny_root.iterdir() if p.is_dir())):
        for image in sorted((tiny_root / patient).rglob("*.png")):
            lines.append(f"patches/{image.relative_to(tiny_root)},{image.parent.name},{patient},site{i % 3}")
    (tmp_path / "cohort.csv").write_text("\n".join(lines) + "\n")
    done = evaluate([f"model={keras_file}", "data=manifest", f"data.manifest={tmp_path / 'cohort.csv'}",
                     "output=ev", "eval.max_maps=0", "eval.bootstrap=200", "eval.plots=false", "logger=none"],
                    tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr
    assert "95% CI by patient (6)   by site (3)" in done.stdout
    assert next(line for line in done.stdout.splitlines() if line.startswith("auc ")).count("[") == 2
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["test_auc_site_ci_low"] <= metrics["test_auc_site_ci_high"]
    assert "no histo_exp metadata: using threshold 0.5" in done.stderr
    assert not list((tmp_path / "ev").glob("*.png")) and (tmp_path / "ev" / "predictions.csv").exists()


def test_a_cohort_of_other_classes_and_a_missing_model_are_one_line_errors(tmp_path, tiny_root, keras_file,
                                                                           cache_dir):
    cohort = tmp_path / "cohort"
    for label, name in (("0", "benign"), ("1", "malignant")):
        for image in sorted(tiny_root.glob(f"*/{label}/*.png"))[:6]:
            target = cohort / name / image.parents[1].name / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(image)
    done = evaluate([f"model={keras_file}", "data=folder", f"data.root={cohort}", "output=ev", "logger=none"],
                    tmp_path, cache_dir)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert ("the model's classes ['no IDC', 'IDC'] (2 outputs) are not the cohort's ['benign', 'malignant']"
            in done.stderr.strip().splitlines()[-1])
    assert not (tmp_path / "ev").exists()
    done = evaluate(["model=nowhere/best_model.keras", "data=idc", f"data.root={tiny_root}", "output=ev2"],
                    tmp_path, cache_dir)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(
        "model=nowhere/best_model.keras: no such file")
    done = evaluate(["data=idc", f"data.root={tiny_root}"], tmp_path, cache_dir)
    assert done.returncode == 2 and "missing model" in done.stderr and "Usage" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]  # no outputs, no store
