"""A stop is never lost: a raise Python drops is raised again at the next safe point; a second stop exits at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from histo_exp import signals
from histo_exp.signals import Stopped


@pytest.fixture
def lost_stop():
    """A SIGTERM received whose own raise was lost (as in a garbage-collection callback)."""
    signals._state.received.append(signal.SIGTERM)
    yield
    signals.reset()


def child(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


def test_a_stop_raised_inside_a_gc_callback_is_lost_there_and_raised_at_the_next_safe_point():
    """What issue 20 saw: Python prints 'Exception ignored' and goes on; ``check`` ends the command for it."""
    done = child("""
        import gc, os, signal
        from histo_exp import signals
        from histo_exp.errors import one_line_errors
        signals.handle_stops()
        def callback(phase, info):
            if phase == "start":
                os.kill(os.getpid(), signal.SIGTERM)  # the handler runs in this callback: its raise is dropped
                sum(range(1000))
        gc.callbacks.append(callback)
        gc.collect()
        gc.callbacks.remove(callback)
        print("went on", flush=True)
        with one_line_errors():
            signals.check()
        print("not stopped", flush=True)
    """)
    assert "Exception ignored" in done.stderr and "went on" in done.stdout  # the fault, reproduced
    assert done.returncode == 143 and "not stopped" not in done.stdout
    assert "stopped (SIGTERM)" in done.stderr


def test_a_second_stop_ends_the_process_at_once_and_says_what_is_left():
    done = child("""
        import os, signal, time
        from histo_exp import signals
        signals.handle_stops()
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:  # cleaning up, as ending_runs does, when the second one comes
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        print("survived", flush=True)
    """, timeout=4)
    assert done.returncode == 130 and "survived" not in done.stdout
    assert "SIGINT again: exiting now" in done.stderr and "resuming the search closes them" in done.stderr


def test_a_background_command_still_takes_ctrl_c():
    """A shell starts a background job with SIGINT ignored; every command's ``handle_stops`` takes it back."""
    done = subprocess.run(["bash", "-c", f"""{sys.executable} -c '
import os, signal, time
from histo_exp import signals
from histo_exp.errors import one_line_errors
signals.handle_stops()
with one_line_errors():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
' & wait $!"""], capture_output=True, text=True, timeout=30)
    assert done.returncode == 130, done.stderr


def test_a_lost_stop_ends_a_fit_at_its_next_batch(lost_stop):
    import keras

    from histo_exp.model.stop_check import StopCheck

    seen = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(batch)

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    with pytest.raises(Stopped):
        model.fit(np.zeros((64, 4)), np.zeros(64), batch_size=8, epochs=3, verbose=0,
                  callbacks=[Count(), StopCheck()])
    assert seen == [0]


def test_a_deferred_block_finishes_and_then_the_stop_is_raised(lost_stop):
    signals.reset()
    steps = []
    with pytest.raises(Stopped):
        with signals.deferred():
            signals._stop(signal.SIGTERM, None)  # held: recorded, not raised
            steps.append("run created and kept")
    assert steps == ["run created and kept"]


def test_a_lost_stop_ends_a_search_before_its_next_trial_makes_a_run(lost_stop, tmp_path):
    import keras_tuner as kt

    from histo_exp.tuning.tuners import RandomSearch

    from fakes import RecordingTracker, ScriptedHyperModel

    tracker = RecordingTracker()
    tuner = RandomSearch(ScriptedHyperModel([0.5]), objective=kt.Objective("val_auc", "max"), max_trials=2,
                         directory=str(tmp_path), overwrite=True, tracker=tracker)
    with pytest.raises(Stopped):
        tuner.on_trial_begin(tuner.oracle.create_trial("tuner0"))
    assert tracker.trials == []
