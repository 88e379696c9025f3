"""From the data config to cached uint8 patches and a patient-level split."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histo_exp.data import sources
from histo_exp.data.cache import Cached, ingest
from histo_exp.data.index import DatasetError, Manifest
from histo_exp.data.split import Split, check_splittable, split_once
from histo_exp.settings import Data, check_data
from histo_exp.settings.fields import build
from histo_exp.space import to_plain

log = logging.getLogger(__name__)


@dataclass
class PatchData:
    """Cached patches (a memory map, one row per indexed file) and a split over the kept rows."""

    images: np.ndarray
    labels: np.ndarray
    patients: np.ndarray
    x: np.ndarray  # slide coordinates of each patch (top-left pixel), from the file names
    y: np.ndarray
    split: Split
    root: Path
    cache: Path
    skipped: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    padded: int = 0
    resized: int = 0
    classes: tuple[str, ...] = ("0", "1")  # ``labels`` index these names
    sites: np.ndarray | None = None  # each patch's site, where the source names it

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    @property
    def fingerprint(self) -> str:
        """The cache key's digest (the end of the cache folder's name): same files, same decoding."""
        return self.cache.name.rsplit("-", 1)[-1]

    def profile(self) -> dict[str, int]:
        """Patches and patients of each split part (what a tracker records about the data)."""
        out = {}
        for part in ("train", "val", "test"):
            idx = getattr(self.split, part)
            out[f"{part}_patches"] = int(idx.size)
            out[f"{part}_patients"] = int(np.unique(self.patients[idx]).size)
        return out

    @property
    def kept(self) -> np.ndarray:
        """Rows that decoded (every split index is one of them)."""
        return np.sort(np.concatenate([self.split.train, self.split.val, self.split.test]))

    def patient_counts(self) -> list[tuple[str, str, int, int]]:
        """(patient, split part, class 0 patches, class 1 patches), sorted by patient; one pass."""
        kept = self.kept
        patients, inverse = np.unique(self.patients[kept], return_inverse=True)
        ones = np.bincount(inverse, weights=self.labels[kept] == 1, minlength=patients.size)
        total = np.bincount(inverse, minlength=patients.size)
        part = self.split.patients(self.patients)
        return [(str(p), part[str(p)], int(t - o), int(o)) for p, t, o in zip(patients, total, ones, strict=True)]

    def split_table(self) -> str:
        """CSV of patient -> split part, with each patient's patch count and IDC share."""
        rows = ["patient,split,patches,idc_share"]
        for patient, part, zeros, ones in self.patient_counts():
            rows.append(f"{patient},{part},{zeros + ones},{ones / (zeros + ones):.3f}")
        return "\n".join(rows) + "\n"

    def summary(self, per_patient: bool = False) -> str:
        """What was loaded, for the console."""
        counts = self.patient_counts()  # one pass over the patients serves every line below
        zeros, ones = (sum(row[c] for row in counts) for c in (2, 3))
        lines = [f"{zeros + ones} patches from {len(counts)} patients in {self.root}: "
                 f"{zeros} class 0, {ones} class 1 (IDC)"]
        for part in ("train", "val", "test"):
            idx = getattr(self.split, part)
            share = f"{self.labels[idx].mean():.0%} IDC" if idx.size else "none held out"
            held = sum(row[1] == part for row in counts)
            lines.append(f"  {part:5s}: {idx.size:6d} patches, {held:3d} patients, {share}")
        if per_patient:
            lines.append("  patient   split  class 0  class 1")
            for patient, part, zeros, ones in counts:
                lines.append(f"  {patient:8s}  {part:5s}  {zeros:7d}  {ones:7d}")
        if self.padded or self.resized:
            lines.append(f"  brought to size: {self.padded} padded, {self.resized} resized")
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} unreadable or dropped files "
                         f"(listed in {self.cache / 'skipped.tsv'})")
        if self.ignored:
            lines.append(f"  ignored {len(self.ignored)} files that are not IDC-layout images")
        mib = self.images.nbytes / 2**20
        lines.append(f"  cache: {self.cache} ({mib:.0f} MiB of uint8 pixels)")
        return "\n".join(lines)


def check_bad_fraction(cached: Cached, total: int, limit: float) -> None:
    """Fail when more than ``limit`` of the files could not be used."""
    bad = len(cached.skipped)
    if bad and bad / total > limit:
        raise DatasetError(
            f"{bad} of {total} files ({bad / total:.1%}) could not be used, more than "
            f"data.max_bad_fraction={limit}; they are listed in {cached.folder / 'skipped.tsv'}. "
            "Fix the files or raise data.max_bad_fraction."
        )


def warn_mostly_padding(cached: Cached, image_size: int) -> None:
    """Warn when most patches fill under half of the ``image_size`` square: each would be a small
    patch in a mostly white image (``data.small_patches=pad``), rarely what was meant."""
    if cached.typical is None or 2 * cached.mostly_padding <= int(cached.usable.sum()):
        return
    h, w = cached.typical
    log.warning("data.image_size=%d is much larger than the patches (typically %dx%d px): %d of them fill "
                "under half of the image and are padded with white; set data.image_size=%d, or "
                "data.small_patches=resize to scale them up", image_size, w, h, cached.mostly_padding,
                max(h, w))


def load(cfg: Data | Mapping, progress: bool = True) -> PatchData:
    """Index, ingest (or reuse the cache) and split the dataset the data settings describe."""
    if isinstance(cfg, Mapping):  # a composed ``data`` group: checked as the runner checks it
        cfg = build(Data, to_plain(cfg), "data")
        check_data(cfg)
    manifest: Manifest = sources.read(cfg, progress)
    log.info("indexed %d patches under %s", len(manifest), manifest.root)
    # The split's checks (both classes, enough patients, the fractions) on the file names, before
    # any decoding: a dataset that cannot be split leaves no cache behind.
    check_splittable(manifest.labels, manifest.patients, cfg.val_fraction, cfg.test_fraction)
    sources.keep_listing(cfg, manifest)
    cached = ingest(
        manifest,
        cache_dir=cfg.cache_dir,
        image_size=cfg.image_size,
        color="rgb",  # data.color=gray is a layer of the model, after the colour augmentation
        small_patches=cfg.small_patches,
        workers=cfg.workers,
        progress=progress,
    )
    check_bad_fraction(cached, len(manifest), cfg.max_bad_fraction)
    warn_mostly_padding(cached, cfg.image_size)
    rows = np.flatnonzero(cached.usable)
    if rows.size == 0:
        raise DatasetError(f"none of the {len(manifest)} patches under {manifest.root} could be read")
    split = split_once(cached.folder, rows, manifest.labels, manifest.patients, cfg.val_fraction,
                       cfg.test_fraction, cfg.seed)
    return PatchData(
        images=cached.images, labels=manifest.labels, patients=manifest.patients,
        x=manifest.x, y=manifest.y, split=split,
        root=manifest.root, cache=cached.folder, skipped=cached.skipped, ignored=manifest.ignored,
        padded=cached.padded, resized=cached.resized, classes=manifest.classes, sites=manifest.sites,
    )
