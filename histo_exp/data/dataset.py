"""From the data config to decoded patches and a patient-level split."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histo_exp.data.decode import decode
from histo_exp.data.index import DatasetError, Manifest, index
from histo_exp.data.split import Split, split_by_patient
from histo_exp.data.synthetic import SyntheticSpec, generate

log = logging.getLogger(__name__)


@dataclass
class PatchData:
    """Decoded patches with their labels, patients and split."""

    images: np.ndarray
    labels: np.ndarray
    patients: np.ndarray
    split: Split
    root: Path
    skipped: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    padded: int = 0
    resized: int = 0

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def split_table(self) -> str:
        """CSV of patient -> split part, with each patient's patch count and IDC share."""
        rows = ["patient,split,patches,idc_share"]
        for patient, part in sorted(self.split.patients(self.patients).items()):
            labels = self.labels[self.patients == patient]
            rows.append(f"{patient},{part},{labels.size},{labels.mean():.3f}")
        return "\n".join(rows) + "\n"

    def summary(self) -> str:
        """A few lines on what was loaded, for the console."""
        lines = [f"{len(self.labels)} patches from {np.unique(self.patients).size} patients in {self.root}"]
        for part in ("train", "val", "test"):
            idx = getattr(self.split, part)
            lines.append(
                f"  {part:5s}: {idx.size:6d} patches, {np.unique(self.patients[idx]).size:3d} "
                f"patients, {self.labels[idx].mean():.0%} IDC"
            )
        if self.padded or self.resized:
            lines.append(f"  brought to size: {self.padded} padded, {self.resized} resized")
        if self.ignored:
            lines.append(f"  ignored {len(self.ignored)} files that are not IDC-layout images")
        return "\n".join(lines)


def data_root(cfg: Mapping) -> Path:
    """The dataset folder; for ``data=synthetic`` the generated set, made on first use."""
    if cfg.get("synthetic"):
        spec = SyntheticSpec(**cfg["synthetic"], seed=cfg["seed"])
        return generate(Path(cfg["root"]), spec)
    if not cfg.get("root"):
        raise DatasetError(
            "data.root is not set: pass data.root=/path/to/IDC_regular_ps50_idx5 "
            "(the folder holding <patient_id>/<0|1>/*.png)"
        )
    return Path(cfg["root"])


def load(cfg: Mapping, progress: bool = True) -> PatchData:
    """Index, decode and split the dataset the data config describes."""
    manifest: Manifest = index(data_root(cfg))
    log.info("indexed %d patches under %s", len(manifest), manifest.root)
    decoded = decode(
        manifest,
        image_size=int(cfg["image_size"]),
        color=str(cfg["color"]),
        small_patches=str(cfg.get("small_patches", "pad")),
        workers=int(cfg.get("workers", 8)),
        progress=progress,
    )
    if decoded.skipped:
        log.warning("skipped %d unreadable or dropped files", len(decoded.skipped))
    kept = manifest.subset(decoded.keep)
    if len(kept) == 0:
        raise DatasetError(f"none of the {len(manifest)} patches under {manifest.root} could be read")
    split = split_by_patient(
        kept.labels, kept.patients, float(cfg["val_fraction"]), float(cfg["test_fraction"]),
        int(cfg["seed"]),
    )
    return PatchData(
        images=decoded.images, labels=kept.labels, patients=kept.patients, split=split,
        root=manifest.root, skipped=decoded.skipped, ignored=manifest.ignored,
        padded=decoded.padded, resized=decoded.resized,
    )
