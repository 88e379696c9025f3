"""KerasTuner's chief/worker protocol in this process, as KerasTuner's own ``mock_distribute`` tests it: a
chief and two workers are threads, each with its own environment, the chief serving the oracle over
gRPC on loopback. (tests/e2e/test_distributed.py keeps one real launch of processes.)"""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

import keras_tuner as kt
import pytest
from keras_tuner.src.distribute import oracle_chief

from histo_exp.settings import Distributed, Tuner
from histo_exp.tuning.search_folder import SearchFolder
from histo_exp.tuning.tuners import TrackedTuner

from fakes import ListOracle, RecordingTracker, ScriptedHyperModel
from helpers import free_port

GOOD = [{"loss": 0.6, "auc": 0.7, "val_loss": 0.6, "val_auc": 0.7}]


class ThreadEnv(dict):
    """``os.environ`` with a copy per thread, so that each thread can be a chief or a worker."""

    def __init__(self, base: dict[str, str]) -> None:
        super().__init__(base)
        self.base, self.local = dict(base), threading.local()

    def _env(self) -> dict[str, str]:
        if not hasattr(self.local, "env"):
            self.local.env = dict(self.base)
        return self.local.env

    def get(self, key, default=None):
        return self._env().get(key, default)

    def __getitem__(self, key):
        return self._env()[key]

    def __setitem__(self, key, value):
        self._env()[key] = value

    def __contains__(self, key):
        return key in self._env()

    def update(self, *args, **kwargs):
        self._env().update(*args, **kwargs)

    def copy(self):
        return dict(self._env())


class ListTuner(TrackedTuner, kt.Tuner):
    """KerasTuner's base tuner with tracking, fed by a ``ListOracle`` (the chief's)."""


def tuner_settings(tmp_path) -> Tuner:
    """The tuner group as a process with no configured role has it: KerasTuner's variables decide."""
    dist = Distributed(role=None, host="127.0.0.1", worker_id=None, session=None, port=1, timeout_s=1.0)
    return Tuner(target="x", objective=None, directory=str(tmp_path), project_name="search", overwrite=False,
                 resume_space="check", distributed=dist, seed=0, max_consecutive_failed_trials=3, cv_folds=1, cv_auto_folds=3,
                 cv_auto_max_patients=40)


def test_a_chief_and_two_workers_run_each_trial_once_and_the_chief_keeps_every_score(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "environ", ThreadEnv(dict(os.environ)))
    # The chief polls for its workers every 20 s once the oracle has stopped: here every 0.05 s.
    monkeypatch.setattr(oracle_chief, "time", SimpleNamespace(sleep=lambda s: time.sleep(min(s, 0.05))))
    port, trials = str(free_port()), 5
    seen: dict[str, tuple[SearchFolder, RecordingTracker, ListTuner]] = {}
    errors: list[BaseException] = []

    def process(tuner_id: str) -> None:
        try:
            os.environ.update(KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP="127.0.0.1",
                              KERASTUNER_ORACLE_PORT=port)
            folder = SearchFolder.of(tuner_settings(tmp_path))
            tracker = RecordingTracker()
            built = ListTuner(oracle=ListOracle([{"learning_rate": 0.01}] * trials), tracker=tracker,
                              hypermodel=ScriptedHyperModel(lambda hp: GOOD), directory=str(tmp_path),
                              project_name="search", role=folder.role)
            seen[tuner_id] = folder, tracker, built
            built.search(x=None, validation_data=None, verbose=1)
        except BaseException as err:  # surfaced in the main thread below
            errors.append(err)

    chief = threading.Thread(target=process, args=("chief",), daemon=True)
    chief.start()  # the workers' requests wait for its server (gRPC's wait_for_ready): no sleep needed
    workers = [threading.Thread(target=process, args=(f"worker{i}",), daemon=True) for i in (1, 2)]
    for thread in workers:
        thread.start()
    for thread in [*workers, chief]:
        thread.join(timeout=120)
    assert not errors, errors
    assert not any(t.is_alive() for t in [chief, *workers]), "the chief did not stop after its workers"

    assert [seen[name][0].role for name in ("chief", "worker1", "worker2")] == ["chief", "worker", "worker"]
    assert seen["chief"][1].trials == []  # the chief only serves the oracle
    reported = [t for name in ("worker1", "worker2") for t in seen[name][1].trials]
    assert sorted(t.trial_id for t in reported) == [str(i) for i in range(trials)]  # each trial once
    assert all(t.status == "FINISHED" and t.metrics["val_auc"] == pytest.approx(0.7) for t in reported)
    oracle = seen["chief"][2].oracle
    assert sorted(oracle.trials) == [str(i) for i in range(trials)]
    assert all(t.status == "COMPLETED" and t.score == pytest.approx(0.7) for t in oracle.trials.values())
