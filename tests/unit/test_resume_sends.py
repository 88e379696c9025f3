"""A resumed search first sends what an earlier, killed launch kept while its store was away."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from histo_exp.tracking import MlflowTracker


def by_role(client: MlflowClient, experiment_id: str) -> tuple[list, list]:
    """The search runs and the trial runs of an experiment."""
    found = client.search_runs([experiment_id])
    return ([r for r in found if r.data.tags.get("histo_exp.role") == "search"],
            [r for r in found if r.data.tags.get("histo_exp.role") == "trial"])


def test_a_resumed_search_sends_what_a_killed_launch_kept_before_closing_its_runs(tmp_path, monkeypatch):
    """A launch loses its store in trial 0, finishes the trial offline and is then killed; the resume
    sends the kept writes first, so trial 0 is FINISHED with its score, not closed KILLED as an orphan."""
    from mlflow.exceptions import MlflowException

    from histo_exp.tuning.search_folder import SearchFolder

    uri, folder = f"sqlite:///{tmp_path}/mlflow.db", SearchFolder(tmp_path / "tuner" / "search")
    first = MlflowTracker(uri, "histo_exp", unsent_dir=str(tmp_path / "launch1" / "mlflow-unsent"),
                          system_metrics=False)
    folder.note_output(tmp_path / "launch1")
    first.start_search({"seed": 1}, "seed: 1\n", run_name="search")
    first.start_trial("0", {"lr": 0.01})

    def gone(*args, **kwargs):
        raise MlflowException("API request to http://store/api/2.0/mlflow/runs/log-batch failed: refused")

    monkeypatch.setattr(first.client, "log_batch", gone)
    first.log_epoch(0, {"val_auc": 0.7})
    first.end_trial("FINISHED", {"val_auc": 0.7})
    assert first.offline and first.unsent.pending() == 3
    monkeypatch.undo()  # the store is back; the first launch was killed before it saw so

    second = MlflowTracker(uri, "histo_exp", unsent_dir=str(tmp_path / "launch2" / "mlflow-unsent"),
                           system_metrics=False)
    folder.note_output(tmp_path / "launch2")
    assert folder.outputs() == [tmp_path / "launch1", tmp_path / "launch2"]
    second.send_unsent(folder.outputs())
    second.start_search({"seed": 1}, "seed: 1\n", run_name="search", resume=first.search_run_id)
    second.end_search("FINISHED")
    search, trials = by_role(second.client, second.experiment_id)
    assert [r.info.run_id for r in search] == [first.search_run_id]
    assert [(r.info.status, r.data.metrics["val_auc"]) for r in trials] == [("FINISHED", 0.7)]
    assert first.unsent.pending() == 0
