"""``python -m histo_exp.predict model=... input=... output=predictions.csv``.

Writes path, patient, x, y, IDC probability and label (at the model's own threshold) for every
image; a file that is not a readable image gets a row with an error, not a crash. For images
named in the IDC layout it also draws one probability map per patient.
"""

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import csv  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import sys  # noqa: E402

import numpy as np  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from histo_exp.config import CONFIG_DIR, local_tracking_uri  # noqa: E402

log = logging.getLogger("histo_exp.predict")


def list_images(source: Path) -> tuple[Path, list[str]]:
    """The root folder and the image paths under it (relative, sorted)."""
    from histo_exp.data.index import IMAGE_SUFFIXES

    if source.is_file():
        return source.parent, [source.name]
    if not source.is_dir():
        raise FileNotFoundError(f"input {str(source)!r} is neither a file nor a folder")
    files = sorted(str(p.relative_to(source)) for p in source.rglob("*")
                   if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no .png/.jpg images under {str(source)!r}")
    return source, files


def manifest_for(root: Path, files: list[str]):
    """A manifest of arbitrary files: patient, x, y and label where the name carries them."""
    from histo_exp.data.index import NAME, Manifest

    parsed = [NAME.match(Path(f).name) for f in files]
    return Manifest(
        root=root, paths=files,
        patients=np.array([m[2] if m else "" for m in parsed]),
        x=np.array([int(m[3]) if m else -1 for m in parsed], dtype=np.int32),
        y=np.array([int(m[4]) if m else -1 for m in parsed], dtype=np.int32),
        labels=np.array([int(m[5]) if m else -1 for m in parsed], dtype=np.int8),
    )


def resolve_model(model: str, tracking_uri: str, scratch: Path) -> Path:
    """A .keras path as given, or the best model of an MLflow search run."""
    if Path(model).is_file():
        return Path(model)
    from histo_exp.tracking import download_model

    return download_model(model, tracking_uri, scratch)


def predict_files(cfg: DictConfig) -> Path:
    """Predict every image of ``cfg.input``; returns the CSV path."""
    import keras

    from histo_exp.data.batches import PatchBatches
    from histo_exp.data.decode import decode
    from histo_exp.evaluate import read_meta
    from histo_exp.evaluation.maps import plot_patient_map
    from histo_exp.model import cnn  # noqa: F401  (registers the model's custom metric)

    with tempfile.TemporaryDirectory() as scratch:
        path = resolve_model(str(cfg.model), str(cfg.tracking_uri), Path(scratch))
        model = keras.models.load_model(path, compile=False)  # prediction needs no optimizer
        meta = read_meta(path)
    size, channels = model.input_shape[1], model.input_shape[-1]
    color = meta.get("color", "gray" if channels == 1 else "rgb")
    threshold = float(meta.get("threshold", 0.5))
    if "threshold" not in meta:
        log.warning("%s carries no histo_exp metadata: using threshold 0.5", path)
    root, files = list_images(Path(cfg.input).expanduser())
    manifest = manifest_for(root, files)
    decoded = decode(manifest, size, color, "pad", int(cfg.workers))
    ok = np.flatnonzero(decoded.keep)
    prob = np.full(len(files), np.nan)
    if ok.size:
        batches = PatchBatches(decoded.images, np.zeros(len(files), np.int8), ok, int(cfg.batch_size))
        prob[ok] = model.predict(batches, verbose=0)[:, 1]
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "patient", "x", "y", "prob_idc", "label", "error"])
        for i, rel in enumerate(files):
            good = bool(decoded.keep[i])
            w.writerow([str(root / rel), manifest.patients[i], manifest.x[i] if manifest.x[i] >= 0 else "",
                        manifest.y[i] if manifest.y[i] >= 0 else "",
                        f"{prob[i]:.6f}" if good else "", int(prob[i] >= threshold) if good else "",
                        "" if good else decoded.skipped.get(rel, "unreadable")])
    log.info("%d images, %d predicted, %d errors, threshold %.3f -> %s", len(files), ok.size,
             len(files) - ok.size, threshold, out)
    maps = Path(cfg.maps_dir) if cfg.maps_dir else out.with_name(out.stem + "_maps")
    for patient in sorted(set(manifest.patients[ok]) - {""}):
        mine = ok[manifest.patients[ok] == patient]
        labels = manifest.labels[mine]
        maps.mkdir(parents=True, exist_ok=True)
        plot_patient_map(patient, manifest.x[mine], manifest.y[mine],
                         labels if (labels >= 0).all() else None, prob[mine],
                         maps / f"{patient}.png", images=decoded.images[mine], threshold=threshold)
    if maps.exists():
        log.info("probability maps: %s", maps)
    return out


def parse(argv: list[str]) -> DictConfig:
    """``key=value`` arguments over the defaults in conf/predict.yaml."""
    cfg = OmegaConf.merge(OmegaConf.load(CONFIG_DIR / "predict.yaml"), OmegaConf.from_dotlist(argv))
    missing = [k for k in ("model", "input") if OmegaConf.is_missing(cfg, k)]
    if missing:
        raise SystemExit(
            f"missing {' and '.join(missing)}. Usage: python -m histo_exp.predict "
            "model=<best_model.keras or MLflow run id> input=<image, folder or patient tree> "
            "[output=predictions.csv]"
        )
    if cfg.tracking_uri is None:
        cfg.tracking_uri = local_tracking_uri()
    return cfg


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(levelname)s] %(message)s",
                        datefmt="%H:%M:%S")
    return predict_files(parse(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
