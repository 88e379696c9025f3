"""``python -m histo_exp.predict model=... input=... output=predictions.csv``.

Writes path, patient, x, y, IDC probability and label (at the model's own threshold) for every
image; a file that is not a readable image gets a row with an error, not a crash. For images
named in the IDC layout it also draws one probability map per patient.

Its outputs may sit inside its input (``output=<input>/predictions.csv``): the files it writes are not
read back as images on the next run. The CSV is written whole (a stop waits for it, a full disk leaves
none) before any map is drawn, so a stop during the maps keeps every prediction.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
import numpy as np
from omegaconf import DictConfig

from histo_exp import signals
from histo_exp.classes import idc_model
from histo_exp.config import CONFIG_DIR, require
from histo_exp.errors import PathNotFound, UsageError, one_line_errors
from histo_exp.files import written
from histo_exp.signals import handle_stops

if TYPE_CHECKING:
    from histo_exp.data.index import Manifest

log = logging.getLogger("histo_exp.predict")
USAGE = ("python -m histo_exp.predict model=<best_model.keras, search run id or models:/name@alias> "
         "input=<image, folder or patient tree> [output=predictions.csv]")
# What ``files.written`` names a file while it is written (``.<stem>.partial-<pid><suffix>``): a run killed
# outright (SIGKILL, power) may leave one, and it is never an input.
PARTIAL = re.compile(r"^\..+\.partial-\d+\.[^.]+$")


def resolve_model(model: str, tracking_uri: str, scratch: Path) -> Path:
    """A .keras path as given, or the model of an MLflow search run or ``models:/`` URI."""
    if Path(model).is_file():
        return Path(model)
    if model.endswith(".keras"):
        raise PathNotFound(f"model={model}: no such file (pass a .keras file, a search run id or a "
                                "models:/ URI)")
    from histo_exp.tracking import download_model

    return download_model(model, tracking_uri, scratch)


def check_writable(path: Path, key: str, folder: bool = False) -> None:
    """Fail before any inference when the file ``path`` (or, with ``folder``, files in it) could not be
    written, creating nothing: the nearest folder that exists takes a temporary file (permission bits
    alone miss read-only mounts and root)."""
    if path.is_dir() and not folder:
        raise UsageError(f"{key}={path} is a folder: name a file in it")
    start = path.absolute() if folder else path.parent.absolute()
    there = next(p for p in (start, *start.parents) if p.exists())
    if not there.is_dir():
        raise UsageError(f"cannot write {key}={path}: {there} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=there):
            pass
    except OSError as err:
        raise UsageError(f"cannot write {key}={path}: {there} is not writable ({err.strerror}); "
                              f"pass {key}=<a path you can write>") from None


def _file_id(path: str | Path) -> tuple[int, int] | None:
    """The file's identity (device, inode) whatever name or link it is reached by; None if not there."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def without_own_outputs(manifest: Manifest, out: Path, maps: Path) -> Manifest:
    """``manifest`` less the files this command writes: the CSV, the map of each of its patients
    (``<maps>/<patient>.png``, by identity, so a linked folder does not hide one) and temporary files.

    Only the names an output could have are looked up: a patient tree's patches cost no system call.
    """
    targets = [out, *(maps / f"{p}.png" for p in np.unique(manifest.patients) if p)]
    names = {t.name for t in targets}
    ids = {i for i in map(_file_id, targets) if i is not None}

    def written_here(rel: str) -> bool:
        name = rel.rpartition(os.sep)[2]
        return ((name.startswith(".") and PARTIAL.match(name) is not None)
                or (name in names and _file_id(manifest.root / rel) in ids))

    own = np.fromiter(map(written_here, manifest.paths), bool, len(manifest))
    if own.any():
        log.info("skipped %d files this command wrote (%s, %s)", own.sum(), out.name, maps)
    if own.all():
        from histo_exp.data.index import DatasetError

        raise DatasetError(f"no PNG, JPEG, TIFF or BMP images under {str(manifest.root)!r} but this command's own "
                           f"outputs ({out.name}, {maps})")
    return manifest.subset(~own) if own.any() else manifest




def class_names(meta: dict) -> list[str] | None:
    """The model's classes from its metadata (never from the input); None for IDC's (and metadata-less) models."""
    return None if idc_model(meta) else list(meta["classes"])


def scored(p: np.ndarray, threshold: float | None, names: list[str] | None) -> list[str | int]:
    """One usable file's probability columns and label: IDC's probability and 0/1 at the threshold, else each
    class's and the class name (2 classes: the second at the threshold; more: the most probable)."""
    if names is None:
        return [f"{p:.6f}", int(p >= threshold)]
    if p.ndim == 0:  # a 2-class model: the second class's probability
        return [f"{1 - p:.6f}", f"{p:.6f}", names[int(p >= threshold)]]
    return [*(f"{v:.6f}" for v in p), names[int(np.argmax(p))]]


def write_csv(path: Path, manifest: Manifest, prob: np.ndarray, usable: np.ndarray, skipped: dict[str, str],
              threshold: float | None, names: list[str] | None = None, truth: bool = False) -> None:
    """One row per file: its place, probabilities and label (``scored``), or why it could not be read;
    with ``truth`` (a labelled cohort, ``histo_exp.evaluate``) its true label too, named as the label is.

    Written whole or not at all, and a stop waits for it (a second or two for the whole dataset):
    the predictions took minutes, and a half CSV would pass for a whole one.
    """
    columns = ["prob_idc"] if names is None else [f"prob_{name}" for name in names]
    with signals.deferred(), written(path) as partial, partial.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "patient", "x", "y", *columns, "label", *["true_label"] * truth, "error"])
        for i, rel in enumerate(manifest.paths):
            good = bool(usable[i])
            w.writerow([str(manifest.root / rel), manifest.patients[i],
                        manifest.x[i] if manifest.x[i] >= 0 else "", manifest.y[i] if manifest.y[i] >= 0 else "",
                        *(scored(prob[i], threshold, names) if good else [""] * (len(columns) + 1)),
                        *[true_label(int(manifest.labels[i]), names)] * truth,
                        "" if good else skipped.get(rel, "unreadable")])


def true_label(label: int, names: list[str] | None) -> str | int:
    """A file's true label as ``scored`` names a predicted one: 0/1 for IDC's classes, else the class name."""
    if label < 0:
        return ""
    return label if names is None else names[label]


def predict_files(cfg: DictConfig) -> Path:
    """Predict every image of ``cfg.input``; returns the CSV path. What was passed is checked before
    Keras is imported (seconds), the model before any image is decoded."""
    from histo_exp.data.index import index_files

    out = Path(cfg.output)
    maps = Path(cfg.maps_dir) if cfg.maps_dir else out.with_name(out.stem + "_maps")
    check_writable(out, "output")
    check_writable(maps, "maps_dir", folder=True)
    manifest = without_own_outputs(index_files(cfg.input), out, maps)
    signals.check()
    from histo_exp.data.batches import PatchBatches
    from histo_exp.data.decode import decode
    from histo_exp.evaluation.evaluate import predict
    from histo_exp.evaluation.maps import patient_maps
    from histo_exp.model.saving import load_model

    with tempfile.TemporaryDirectory() as scratch:
        path = resolve_model(str(cfg.model), str(cfg.tracking_uri), Path(scratch))
        model, meta = load_model(path)
    size, channels = model.input_shape[1], model.input_shape[-1]
    color = meta.get("color", "gray" if channels == 1 else "rgb")
    threshold = meta.get("threshold", 0.5)  # None: more than 2 classes, the most probable one
    names = class_names(meta)
    if "threshold" not in meta:
        log.warning("%s carries no histo_exp metadata: using threshold 0.5", path)
    signals.check()
    decoded = decode(manifest, size, color, "pad", cfg.workers)
    ok = np.flatnonzero(decoded.usable)
    outputs = int(model.output_shape[-1])
    prob = np.full(len(manifest) if outputs == 2 else (len(manifest), outputs), np.nan)
    if ok.size:
        batches = PatchBatches(decoded.images, np.maximum(manifest.labels, 0), ok, int(cfg.batch_size))
        prob[ok] = predict(model, batches).y_prob
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out, manifest, prob, decoded.usable, decoded.skipped, threshold, names)
    log.info("%d images, %d predicted, %d errors, %s -> %s", len(manifest), ok.size, len(manifest) - ok.size,
             "the most probable class" if threshold is None else f"threshold {threshold:.3f}", out)
    if patient_maps(manifest.patients[ok], manifest.x[ok], manifest.y[ok], manifest.labels[ok], prob[ok],
                    threshold, maps, images=decoded.images, rows=ok):
        log.info("probability maps: %s", maps)
    return out


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR / "commands"), config_name="predict")
def main(cfg: DictConfig) -> None:
    with one_line_errors():
        require(cfg, ("model", "input"), USAGE)
        predict_files(cfg)


if __name__ == "__main__":
    handle_stops()
    main()
