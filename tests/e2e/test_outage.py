"""A tracking server that dies mid-search, killed by PID (a real ``mlflow server``): training goes
on, what could not be sent is kept in the output folder, and every finished trial reaches the
store exactly once when it is back, through the running search itself or ``histo_exp.sync``."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter

from mlflow.tracking import MlflowClient

from histo_exp.tracking import MlflowTracker

from helpers import TINY, MlflowServer, cli_env, in_trial, predict


def by_role(client: MlflowClient, experiment_id: str) -> tuple[list, list]:
    """The search runs and the trial runs of an experiment."""
    found = client.search_runs([experiment_id])
    return ([r for r in found if r.data.tags.get("histo_exp.role") == "search"],
            [r for r in found if r.data.tags.get("histo_exp.role") == "trial"])


def test_a_server_killed_mid_trial_costs_nothing_and_the_search_sends_the_rest_when_it_is_back(tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    try:
        t = MlflowTracker(server.url, "histo_exp", unsent_dir=str(tmp_path / "out" / "mlflow-unsent"),
                          system_metrics=False)
        t.start_search({"seed": 1}, "seed: 1\n", run_name="search")
        t.start_trial("0", {"lr": 0.01})
        t.log_epoch(0, {"val_auc": 0.6})
        server.kill()
        began = time.monotonic()
        t.log_epoch(1, {"val_auc": 0.7})  # the store is gone: kept, and the trial goes on
        t.end_trial("FINISHED", {"val_auc": 0.7})
        t.start_trial("1", {"lr": 0.1})  # still gone: a run made offline
        t.log_epoch(0, {"val_auc": 0.8})
        t.end_trial("FINISHED", {"val_auc": 0.8})
        away = time.monotonic() - began
        assert t.offline and t.unsent.pending() == 8, away
        assert "python -m histo_exp.sync" in t.describe()

        server.start()  # the same port and store
        t.start_trial("2", {"lr": 0.001})  # sees it back: sends the kept writes first
        assert not t.offline and t.unsent.pending() == 0
        t.log_epoch(0, {"val_auc": 0.75})
        t.end_trial("FINISHED", {"val_auc": 0.75})
        t.end_search("FINISHED")

        client = MlflowClient(server.url)
        search, trials = by_role(client, t.experiment_id)
        assert [r.info.status for r in search] == ["FINISHED"]
        assert Counter(r.data.tags["histo_exp.trial_id"] for r in trials) == {"0": 1, "1": 1, "2": 1}
        assert all(r.info.status == "FINISHED" for r in trials)
        assert all(r.data.tags["mlflow.parentRunId"] == search[0].info.run_id for r in trials)
        trial = {r.data.tags["histo_exp.trial_id"]: r for r in trials}
        history = client.get_metric_history(trial["0"].info.run_id, "val_auc")
        assert [(m.step, m.value) for m in history] == [(0, 0.6), (1, 0.7), (2, 0.7)]
        assert trial["1"].data.params == {"lr": "0.1"} and trial["1"].data.metrics["val_auc"] == 0.8
    finally:
        server.stop()


def test_a_search_outlives_its_tracking_server_and_sync_sends_everything(tmp_path, cache_dir):
    """The server is killed in trial 1 of 2 and stays down: the search ends, prints its table and
    says what was kept; once the server is back, ``histo_exp.sync`` sends it all, each trial once,
    and the model is reachable by the run id."""
    server = MlflowServer(tmp_path / "server").start()
    out = tmp_path / "out"
    try:
        args = [sys.executable, "-m", "histo_exp", *TINY, "trainer.epochs=2",
                "trainer.early_stopping_patience=null", f"logger.tracking_uri={server.url}",
                f"hydra.run.dir={out}"]
        code, output = in_trial(args, tmp_path, cache_dir, "trial 1 of at most 2", lambda proc: server.kill())
        assert code == 0, output[-3000:]
        assert "stopped answering" in output and "test" in output and "auc" in output  # the table
        assert f"python -m histo_exp.sync folder={out}" in output
        assert (out / "best_model.keras").is_file()

        server.start()
        sent = subprocess.run([sys.executable, "-m", "histo_exp.sync", f"folder={out}"], cwd=tmp_path,
                              env=cli_env(cache_dir), capture_output=True, text=True, timeout=600)
        assert sent.returncode == 0 and "sent " in sent.stdout, sent.stderr[-3000:]

        client = MlflowClient(server.url)
        search, trials = by_role(client, client.get_experiment_by_name("histo_exp").experiment_id)
        assert [r.info.status for r in search] == ["FINISHED"] and "test_auc" in search[0].data.metrics
        assert Counter(r.data.tags["histo_exp.trial_id"] for r in trials) == {"0": 1, "1": 1}
        assert all(r.info.status == "FINISHED" and "val_auc" in r.data.metrics for r in trials)
        patch = next(cache_dir.rglob("*.png"))
        predictions = predict([f"model={search[0].info.run_id}", f"input={patch}",
                               f"output={tmp_path}/p.csv", f"tracking_uri={server.url}"])
        assert predictions.read_text().count("\n") == 2  # the header and the patch's row
    finally:
        server.stop()
