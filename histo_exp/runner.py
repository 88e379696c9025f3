"""One experiment, top to bottom: settings -> data -> tuner -> search -> final model on test patients -> tracker.

The story only: ``build`` makes the objects, ``record`` writes what the search leaves behind.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import warnings
from pathlib import Path

import keras
import keras_tuner as kt
from omegaconf import DictConfig
from sklearn.exceptions import ConvergenceWarning

from histo_exp import build, record, stack
from histo_exp.data.batches import split_batches
from histo_exp.data.dataset import PatchData, load
from histo_exp.data.device import on_device
from histo_exp.evaluation.evaluate import evaluate
from histo_exp.settings import Settings
from histo_exp.tracking import NullTracker, Tracker, check_server, ending_runs
from histo_exp.tuning.failures import stopped_by_failures
from histo_exp.tuning.final_model import final_model
from histo_exp.tuning.resume import checked, search_space
from histo_exp.tuning.search_folder import SearchFolder

log = logging.getLogger(__name__)
# Each trial, fold and ensemble member is a new model, so TensorFlow traces new functions: expected, not a problem.
logging.getLogger("tensorflow").addFilter(lambda record: "tf.function retracing" not in record.getMessage())


def run(cfg: DictConfig, settings: Settings | None = None) -> dict[str, float]:
    """Run the configured experiment and return its headline metrics (none for a worker). ``settings``:
    ``cfg`` already checked (``tuning.resume.checked``); else it is checked here, before any data or run."""
    settings = settings or checked(cfg)
    keras.utils.set_random_seed(settings.seed)
    out = Path(settings.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_server(settings.logger.get("tracking_uri"))  # seconds; building a model first takes longer
    build.check_model(settings)
    data = load(settings.data)
    log.info("data:\n%s", data.summary())
    data = dataclasses.replace(data, images=on_device(data.images, settings.trainer.data_on_device))
    log.info("stack: %s", stack.describe(keras.backend.backend()))
    with SearchFolder.of(settings.tuner).entered() as folder:
        folder.note_output(out)
        if folder.role == "worker":
            return train_trials(settings, data, folder)
        with folder.led():
            tracker = build.tracker(settings)
            tuner = build.tuner(settings, data, tracker, folder)
            folder.save_space(search_space(settings))
            record.open_search_run(cfg, settings, tracker, folder)
            with ending_runs(tracker):
                tracker.log_dataset(settings.data.name, data.fingerprint, str(data.root), data.profile())
                search(settings, data, tuner)
                final = final_model(tuner, data, [val.indices for _, val in tuner.folds], settings.eval,
                                    settings.trainer, settings.seed)  # SearchFailed if no trial succeeded
                log.info(final.description)
                result = evaluate(final.test_model, final.val, data, settings.eval, out, settings.seed)
                metrics = record.log_results(settings, data, final, tuner, result, tracker, out)
    log.info("outputs: %s\n%s", out, tracker.describe())
    if data.skipped:
        log.warning("%d files were skipped (listed in %s)", len(data.skipped), data.cache / "skipped.tsv")
    return metrics


def train_trials(settings: Settings, data: PatchData, folder: SearchFolder) -> dict[str, float]:
    """A distributed worker: train the trials the chief hands out, under the chief's search run."""
    tracker: Tracker = NullTracker()
    uri = settings.logger.get("tracking_uri")
    if uri:
        # The chief creates the store and the run: open the store only once the run is recorded.
        log.info("%s: waiting for the chief's search run in %s", os.environ["KERASTUNER_TUNER_ID"], folder.path)
        store = functools.cache(lambda: build.tracker(settings))
        run_id = folder.wait_for_run(uri, lambda run: store().is_running(run),
                                     settings.tuner.distributed.timeout_s)
        tracker = store()
        tracker.join_search(run_id)
    tuner = build.tuner(settings, data, tracker, folder)
    with ending_runs(tracker):  # a worker's open trial only: the search run is the chief's
        search(settings, data, tuner)
    return {}


def search(settings: Settings, data: PatchData, tuner: kt.Tuner) -> None:
    """Run the tuner's trials (a chief serves the oracle instead, until its workers are done).

    KerasTuner raises when ``tuner.max_consecutive_failed_trials`` trials in a row failed: the
    search ends there, and what it found so far is kept (or ``final_model`` says that nothing was).
    """
    trainer, seed = settings.trainer, settings.seed
    with warnings.catch_warnings():  # the Gaussian process's fit notes, once per trial: noise here
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        try:
            tuner.search(split_batches(data, "train", trainer.batch_size, seed, trainer.loader_workers),
                         validation_data=split_batches(data, "val", trainer.batch_size, seed,
                                                       trainer.loader_workers),
                         verbose=trainer.verbose)
        except RuntimeError:
            if not stopped_by_failures(tuner.oracle):
                raise
            log.warning("the search stopped early at tuner.max_consecutive_failed_trials=%d failed trials in a row",
                        tuner.oracle.max_consecutive_failed_trials)
