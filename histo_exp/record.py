"""What a search leaves behind: its run opened (or reopened) in the tracker, and at the end the metrics,
plots, maps, model, trials table and split, on disk in the output folder and on the search run."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import keras_tuner as kt
from omegaconf import DictConfig, OmegaConf

from histo_exp import files, stack
from histo_exp.classes import model_classes
from histo_exp.config import config_yaml
from histo_exp.data.card import write_card
from histo_exp.data.dataset import PatchData
from histo_exp.evaluation.evaluate import Evaluation
from histo_exp.evaluation.plots import plot_trials
from histo_exp.model.saving import save_model
from histo_exp.settings import Settings
from histo_exp.tracking import FINAL_MODEL, Tracker, flatten, provenance
from histo_exp.tuning.failures import is_scored
from histo_exp.tuning.final_model import FinalModel
from histo_exp.tuning.search_folder import SearchFolder
from histo_exp.tuning.trials import format_hparams, from_tuner_dir, trials_csv

log = logging.getLogger(__name__)
NOTE = "mlflow.note.content"  # the tag MLflow shows as the run's description


def open_search_run(cfg: DictConfig, settings: Settings, tracker: Tracker, folder: SearchFolder) -> None:
    """Start the search run, or reopen the one this search folder logged to, and record it there with the
    Python environment it runs in."""
    uri = tracker.tracking_uri
    tracker.send_unsent(folder.outputs())  # earlier launches' trials first: this one's resume counts them
    tracker.start_search(
        flatten(OmegaConf.to_container(cfg, resolve=True)), config_yaml(cfg),
        run_name=f"{settings.task_name}-{settings.optimizer['name']}", tags=provenance(),
        resume=folder.recorded_run(uri) if uri else None,
    )
    if tracker.search_run_id:
        folder.record_run(tracker.search_run_id, uri)
    # Every installed version, beside the main ones the run's tags name (provenance): the stack behind a number.
    tracker.log_artifact(files.write_text(Path(settings.paths.output_dir) / "environment.txt", stack.installed()))
    if folder.role == "chief":
        log.info("chief: serving the search on %s:%s for workers (tuner folder %s)",
                 os.environ["KERASTUNER_ORACLE_IP"], os.environ["KERASTUNER_ORACLE_PORT"], folder.path)


def log_results(settings: Settings, data: PatchData, final: FinalModel, tuner: kt.Tuner, result: Evaluation,
                tracker: Tracker, out: Path) -> dict[str, float]:
    """Log the evaluation's metrics, plots and maps, the final model, the trials and the split."""
    trial = final.trials[0]
    metrics = {"best_val_auc": float(trial.score), **result.metrics}
    tracker.log_metrics(metrics)
    tracker.set_tags({FINAL_MODEL: final.description, **run_note(data.classes)})
    save_final_model(settings, data, final, tuner, result, tracker, out)
    tracker.register(float(trial.score), data.fingerprint)
    for path in plots(result, tuner, trial, out) if settings.eval.plots else ():
        tracker.log_artifact(path)
    for path in result.maps:
        tracker.log_artifact(path, "maps")
    trials = out / "trials.csv"  # the same table as `python -m histo_exp.trials source=<tuner folder>`
    tracker.log_artifact(files.write_text(trials, trials_csv(from_tuner_dir(Path(tuner.project_dir)))))
    tracker.log_artifact(files.write_text(out / "split.csv", data.split_table()))
    for path in write_card(data, out, draw=settings.eval.plots):  # the mosaic, patches per patient, any images found twice
        tracker.log_artifact(path, "data")
    if data.skipped:
        tracker.log_artifact(data.cache / "skipped.tsv")
    log.info("best trial %s: %s=%.4f  [%s]\n%s", trial.trial_id, tuner.oracle.objective.name, trial.score,
             format_hparams(trial.hyperparameters.values), result.table)
    return metrics


def save_final_model(settings: Settings, data: PatchData, final: FinalModel, tuner: kt.Tuner,
                     result: Evaluation, tracker: Tracker, out: Path) -> None:
    """``best_model.keras`` with what prediction needs to know, as a file and as the run's servable model."""
    meta = {"image_size": settings.data.image_size, "color": "rgb" if data.input_shape[-1] == 3 else "gray",
            "network_color": settings.data.color, "threshold": result.threshold,
            "threshold_method": str(settings.eval.threshold), "threshold_from": "validation patients' predictions"
            + (" (out of fold)" if tuner.folds else ""), "kept": final.description, "tta": final.tta,
            "trials": [t.trial_id for t in final.trials], "classes": model_classes(data.classes), **provenance()}
    if result.threshold is None:
        meta["decision"] = "argmax"  # more than 2 classes: the most probable one, no threshold
    saved = save_model(final.model, out / "best_model.keras", meta)
    tracker.log_artifact(saved, "model")
    tracker.log_model(saved, data.input_shape)


def run_note(classes: tuple[str, ...]) -> dict[str, str]:
    """The run's description when there are more than 2 classes: what ``val_auc`` and ``test_auc`` then mean."""
    if len(classes) <= 2:
        return {}
    return {NOTE: f"{len(classes)} classes ({', '.join(classes)}): val_auc and test_auc are the macro one-vs-rest "
                  "AUC (the mean of each class's AUC against the rest, each logged as auc_<class>); the decision "
                  "is the most probable class."}


def plots(result: Evaluation, tuner: kt.Tuner, best: kt.engine.trial.Trial, out: Path) -> list[Path]:
    """The evaluation's figures, the trials plot and the best trial's training curves."""
    drawn = [*result.plots, plot_trials(
        [(t.hyperparameters.values, t.score) for t in tuner.oracle.trials.values() if is_scored(t)],
        out / "trials.png")]
    curves = Path(tuner.get_trial_dir(best.trial_id)) / "training_curves.png"
    if curves.exists():  # drawn by whichever process ran the trial
        drawn.append(files.copy(curves, out / "training_curves.png"))
    return drawn
