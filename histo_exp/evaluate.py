"""``python -m histo_exp.evaluate model=... data=<source> data.root=<cohort> [output=<folder>]``: external validation.

Scores a saved model on a labelled cohort it never saw (another site, say) without training: the search's
metrics table with 95% CIs by patient (and by site), the ROC, PR and confusion figures, probability maps
and a CSV of every file's predictions and true label, in ``output``; with a tracking store (the default
``logger``), an evaluation run (tag ``histo_exp.role=evaluation``) that names the model's search run.

``model=`` is the trained model (a .keras file, a search run id or a ``models:/`` URI), not the experiment's
model group: this command's config (conf/commands/evaluate.yaml) takes the experiment's ``data`` and
``eval`` groups only. What was passed is checked before Keras is imported, the model before any patch is decoded.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
import yaml
from omegaconf import DictConfig, OmegaConf

from histo_exp import files, signals
from histo_exp.config import CONFIG_DIR, config_yaml, require
from histo_exp.errors import UsageError, one_line_errors
from histo_exp.predict import check_writable, class_names, resolve_model, write_csv
from histo_exp.settings import Data, check_data
from histo_exp.settings.fields import build
from histo_exp.signals import handle_stops
from histo_exp.space import to_plain

if TYPE_CHECKING:
    from histo_exp.evaluation.evaluate import Evaluation
    from histo_exp.evaluation.external import Cohort

log = logging.getLogger("histo_exp.evaluate")
USAGE = ("python -m histo_exp.evaluate model=<best_model.keras, search run id or models:/name@alias> "
         "data=<idc|folder|manifest|pcam> data.root=<the cohort> [output=<folder>]")
MODEL_RUN = "histo_exp.model_run"  # on an evaluation run: the search run that made the model
MODEL_REF = "histo_exp.model"      # on an evaluation run: model= as given


def evaluate_model(cfg: DictConfig) -> dict[str, float]:
    """Score ``cfg.model`` on the cohort ``cfg.data``; returns the metrics (``test_*``, as a search logs them)."""
    OmegaConf.resolve(cfg)  # output's time once, for every key that names it
    data_settings(cfg.data, cfg.data.image_size or 50)  # the data keys, checked before Keras is imported
    out = Path(cfg.output)
    check_writable(out, "output", folder=True)
    from histo_exp.tracking import check_server

    check_server(cfg.logger.get("tracking_uri"))
    with tempfile.TemporaryDirectory() as scratch:
        path = resolve_model(str(cfg.model), str(cfg.tracking_uri), Path(scratch))
        run_id = model_run(str(cfg.model), path)
        signals.check()
        from histo_exp.evaluation.external import check_classes, load_cohort, score
        from histo_exp.model.saving import load_model

        model, meta = load_model(path)
    size = int(model.input_shape[1])
    if cfg.data.image_size not in (None, size):
        raise UsageError(f"data.image_size={cfg.data.image_size} but the model takes {size}x{size} patches: "
                         "drop data.image_size (the model's size is used)")
    cohort = load_cohort(data_settings(cfg.data, size))
    log.info("cohort: %s", "\n".join(line for line in cohort.data.summary().splitlines()
                                     if not line.startswith(("  train", "  val ", "  test "))))  # no split here
    check_classes(meta, int(model.output_shape[-1]), cohort)
    signals.check()
    result, prob = score(model, meta, cohort, cfg.eval, out, int(cfg.seed))
    csv = out / "predictions.csv"
    write_csv(csv, cohort.manifest, prob, cohort.usable, cohort.data.skipped, result.threshold, class_names(meta),
              truth=True)
    files.write_text(out / "metrics.json", json.dumps(result.metrics, indent=1))
    files.write_text(out / "metrics.txt", result.table + "\n")
    print(result.table, flush=True)
    log.info("%d patches of %d patients scored -> %s (predictions.csv, metrics, %d figures, %d maps)",
             cohort.rows.size, len(set(cohort.data.patients[cohort.rows])), out, len(result.plots), len(result.maps))
    log_run(cfg, cohort, result, [csv, out / "metrics.json", out / "metrics.txt"], run_id)
    return result.metrics


def data_settings(node: DictConfig, image_size: int) -> Data:
    """The ``data`` group checked as a search checks it, at ``image_size`` (the model's input size)."""
    data = build(Data, to_plain(node) | {"image_size": image_size}, "data")
    check_data(data)
    return data


def model_run(ref: str, path: Path) -> str | None:
    """The search run that made the model: ``ref`` itself (a run id), a ``runs:/`` URI's, or the one a
    downloaded MLflow model names (its MLmodel file); None for a .keras file."""
    if Path(ref).is_file():
        return None
    if ref.startswith("runs:/"):
        return ref.removeprefix("runs:/").split("/")[0]
    if not ref.startswith("models:/"):
        return ref
    for folder in path.parents[:3]:
        if (folder / "MLmodel").is_file():
            return (yaml.safe_load((folder / "MLmodel").read_text()) or {}).get("run_id")
    return None


def log_run(cfg: DictConfig, cohort: Cohort, result: Evaluation, outputs: list[Path], run_id: str | None) -> None:
    """The evaluation run, where ``logger`` names a store: params, metrics, figures, maps and outputs."""
    from hydra.utils import instantiate

    from histo_exp.classes import model_classes
    from histo_exp.tracking import ending_runs, flatten, provenance
    from histo_exp.tracking.base import ROLE

    tracker = instantiate(cfg.logger)
    data = cohort.data
    tags = {ROLE: "evaluation", MODEL_REF: str(cfg.model), **({MODEL_RUN: run_id} if run_id else {}), **provenance()}
    params = flatten(OmegaConf.to_container(cfg, resolve=True)) | {"classes": ", ".join(model_classes(data.classes))}
    tracker.start_search(params, config_yaml(cfg), run_name=f"evaluate-{cfg.data.name}", tags=tags)
    with ending_runs(tracker):
        tracker.log_dataset(str(cfg.data.name), data.fingerprint, str(data.root), data.profile())
        tracker.log_metrics(result.metrics)
        for path in [*result.plots, *outputs]:
            tracker.log_artifact(path)
        for path in result.maps:
            tracker.log_artifact(path, "maps")
    log.info("%s", tracker.describe())


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR / "commands"), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with one_line_errors():
        require(cfg, ("model",), USAGE)
        evaluate_model(cfg)


if __name__ == "__main__":
    handle_stops()
    main()
