"""Per-patient slide maps rebuilt from patch coordinates: tissue, ground truth, predicted IDC.

Each map is written whole or not at all, and a stop is acted on between maps: the maps drawn stay,
and a maps folder the stop left empty is removed (an empty folder reads as "there were no maps").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from histo_exp import signals  # noqa: E402
from histo_exp.files import written  # noqa: E402

STEP = 50  # the dataset's patch grid, in slide pixels
THUMB = 8  # pixels per patch in the tissue panel


def grid(x: np.ndarray, y: np.ndarray, values: np.ndarray, step: int = STEP) -> np.ndarray:
    """Values laid out on the slide's patch grid; cells without a patch are NaN."""
    col, row = (x - x.min()) // step, (y - y.min()) // step
    out = np.full((row.max() + 1, col.max() + 1), np.nan)
    out[row, col] = values
    return out


def mosaic(x: np.ndarray, y: np.ndarray, images: np.ndarray, step: int = STEP) -> np.ndarray:
    """The tissue itself: each patch shrunk to THUMB px and put at its place on white.

    One resize of the patches stacked into a column (area averaging never crosses a patch edge,
    as each patch's side maps to exactly THUMB pixels), then one scatter onto the grid.
    """
    col, row = (x - x.min()) // step, (y - y.min()) // step
    n, side, _, channels = images.shape
    column = np.ascontiguousarray(images).reshape(n * side, side, channels)
    thumbs = cv2.resize(column, (THUMB, n * THUMB), interpolation=cv2.INTER_AREA).reshape(n, THUMB, THUMB, channels)
    out = np.full((row.max() + 1, THUMB, col.max() + 1, THUMB, channels), 255, np.uint8)
    out.transpose(0, 2, 1, 3, 4)[row, col] = thumbs
    out = out.reshape((row.max() + 1) * THUMB, (col.max() + 1) * THUMB, channels)
    return out[..., 0] if channels == 1 else out


def plot_patient_map(
    patient: str, x: np.ndarray, y: np.ndarray, labels: np.ndarray | None, prob: np.ndarray,
    path: Path, images: np.ndarray | None = None, threshold: float | None = None,
) -> Path:
    """Tissue (when given), ground truth (when known) and predicted IDC probability side by side; for more than
    2 classes (``prob`` of shape (n, classes)) the predicted class, in the ground truth's colours."""
    panels = []
    if images is not None:
        panels.append(("tissue", mosaic(x, y, images), {"cmap": "gray" if images.shape[-1] == 1 else None}))
    if prob.ndim == 2:
        colours = {"cmap": matplotlib.colormaps["tab10"].resampled(prob.shape[1]), "vmin": -0.5,
                   "vmax": prob.shape[1] - 0.5}
        if labels is not None:
            panels.append(("ground truth (class colours)", grid(x, y, labels), colours))
        panels.append(("predicted class", grid(x, y, np.argmax(prob, axis=1)), colours))
    else:
        if labels is not None:
            panels.append(("ground truth (IDC = red)", grid(x, y, labels),
                           {"cmap": matplotlib.colors.ListedColormap(["#d9d9d9", "#d62728"]), "vmin": 0, "vmax": 1}))
        panels.append(("predicted IDC probability", grid(x, y, prob), {"cmap": "inferno", "vmin": 0, "vmax": 1}))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), dpi=110, squeeze=False)
    for ax, (title, img, kw) in zip(axes[0], panels, strict=False):
        shown = ax.imshow(img, interpolation="nearest", **kw)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.colorbar(shown, ax=axes[0][-1], fraction=0.046, pad=0.04)
    extra = f", threshold {threshold:.2f}" if threshold is not None else ""
    fig.suptitle(f"patient {patient}: {len(prob)} patches{extra}")
    try:
        fig.tight_layout()
        with written(path) as partial:
            fig.savefig(partial)
    finally:
        plt.close(fig)  # a stop or a full disk mid-draw leaves no figure open
    return path


def patient_maps(patients: np.ndarray, x: np.ndarray, y: np.ndarray, labels: np.ndarray | None,
                 prob: np.ndarray, threshold: float, folder: Path, images: np.ndarray | None = None,
                 rows: np.ndarray | None = None, limit: int | None = None) -> list[Path]:
    """One map per patient, the ones with most patches first, up to ``limit``.

    ``patients``, ``x``, ``y``, ``labels`` and ``prob`` are per scored patch; ``images[rows]`` are
    their pixels (a memory map is read only for the patients drawn). Patients named "" (files
    outside the IDC layout) and labels below 0 (unknown) are not drawn.
    """
    names, counts = np.unique(patients[patients != ""], return_counts=True)
    chosen = names[np.argsort(-counts, kind="stable")][:limit]
    rows = np.arange(len(patients)) if rows is None else np.asarray(rows)
    paths = []
    with _kept_only_if_used(folder):
        for patient in sorted(chosen):
            signals.check()  # a stop whose own raise was lost (histo_exp.signals): at most one map late
            mine = np.flatnonzero(patients == patient)
            known = labels is not None and bool((labels[mine] >= 0).all())
            folder.mkdir(parents=True, exist_ok=True)
            paths.append(plot_patient_map(
                str(patient), x[mine], y[mine], labels[mine] if known else None, prob[mine],
                folder / f"{patient}.png", images=None if images is None else images[rows[mine]],
                threshold=threshold,
            ))
    return paths


@contextlib.contextmanager
def _kept_only_if_used(folder: Path) -> Iterator[None]:
    """Remove ``folder`` if the block made it and fails (a stop, a full disk) before a file lands in it."""
    made = not folder.exists()
    try:
        yield
    except BaseException:
        if made:
            with contextlib.suppress(OSError):  # not empty (a map was drawn), or not there: kept as it is
                folder.rmdir()
        raise
