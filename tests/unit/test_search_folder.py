"""The search folder and the process role: KerasTuner's environment, the recorded search run, the launcher's
commands."""

from __future__ import annotations

import os

import pytest

from histo_exp.launch import commands, device_env
from histo_exp.settings import load
from histo_exp.tuning.search_folder import SearchFolder


def test_distributed_config_becomes_kerastuners_environment(compose_cfg, monkeypatch):
    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.delenv(name, raising=False)

    def folder(*overrides: str) -> SearchFolder:
        return SearchFolder.of(load(compose_cfg(*overrides)).tuner)

    worker = folder("tuner.distributed.role=worker", "tuner.distributed.worker_id=3", "tuner.distributed.port=9123")
    assert worker.role == "worker" and worker.env == {"KERASTUNER_TUNER_ID": "worker3",
                                                      "KERASTUNER_ORACLE_IP": "127.0.0.1",
                                                      "KERASTUNER_ORACLE_PORT": "9123"}
    assert folder("tuner.distributed.role=chief").env["KERASTUNER_TUNER_ID"] == "chief"
    assert folder().env == {} and folder().role == "lone"
    unnamed = folder("tuner.distributed.role=worker").env
    assert unnamed["KERASTUNER_TUNER_ID"].startswith("worker-")  # host and pid: never two alike
    with worker.entered():  # set for the run, gone after it
        assert os.environ["KERASTUNER_TUNER_ID"] == "worker3"
    assert "KERASTUNER_TUNER_ID" not in os.environ
    with pytest.raises(ValueError, match="tuner.distributed.role must be one of 'chief', 'worker' or null"):
        folder("tuner.distributed.role=boss")
    # KerasTuner's own protocol, set by a cluster scheduler, is understood too.
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner7")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "10.0.0.1")
    assert folder().role == "worker"


def test_workers_wait_for_a_running_search_run_and_say_what_to_fix(tmp_path):
    SearchFolder(tmp_path, session="s1").record_run("abc", "sqlite:///x.db")
    alone = SearchFolder(tmp_path)
    assert alone.recorded_run("sqlite:///x.db") == "abc"
    assert alone.recorded_run("http://elsewhere") is None  # another store: not this run
    later = SearchFolder(tmp_path, session="s2")  # a later launch's chief resumes the run...
    assert later.recorded_run("sqlite:///x.db") == "abc" and later.recorded_run("sqlite:///x.db", this_launch=True) is None
    assert alone.wait_for_run("sqlite:///x.db", lambda run: run == "abc", 5) == "abc"
    with pytest.raises(TimeoutError, match="start the chief"):  # recorded but ended: a stale record
        alone.wait_for_run("sqlite:///x.db", lambda run: False, 0.3, poll_s=0.1)
    with pytest.raises(TimeoutError):  # running, but an earlier launch's chief: not this session's
        SearchFolder(tmp_path, session="s2").wait_for_run("sqlite:///x.db", lambda run: True, 0.3, poll_s=0.1)
    assert SearchFolder(tmp_path, session="s1").wait_for_run("sqlite:///x.db", lambda run: True, 5) == "abc"


def test_launcher_gives_every_process_the_same_folder_and_port(tmp_path):
    cmds = commands(2, tmp_path, 9000, ["debug=fast"], session="abc")
    assert list(cmds) == ["chief", "worker1", "worker2"]
    for name, cmd in cmds.items():
        assert f"tuner.directory={tmp_path}" in cmd and "tuner.distributed.port=9000" in cmd
        assert f"hydra.run.dir={tmp_path}/{name}" in cmd and "debug=fast" in cmd
        assert "tuner.distributed.session=abc" in cmd
    assert "tuner.distributed.worker_id=2" in cmds["worker2"]
    # One GPU per worker, round robin; the chief (index 0) keeps off the GPUs.
    assert [device_env(i, ["0", "1"])["CUDA_VISIBLE_DEVICES"] for i in range(4)] == ["", "0", "1", "0"]
    assert device_env(1, ["0"])["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"  # workers may share a GPU
    assert device_env(1, []) == {}
