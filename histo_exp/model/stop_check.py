"""A stop (Ctrl-C, SIGTERM) acted on within a batch of every fit and prediction (``signals.check``)."""

from __future__ import annotations

import keras

from histo_exp.signals import check


class StopCheck(keras.callbacks.Callback):
    """Raise a stop received since the last batch, if its own raise was lost (``histo_exp.signals``)."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        check()

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        check()

    def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None:
        check()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        check()
