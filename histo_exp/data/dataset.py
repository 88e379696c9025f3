"""From the data config to cached uint8 patches and a patient-level split."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histo_exp.data import sources
from histo_exp.data.cache import Cached, ingest
from histo_exp.data.card import warn_duplicates
from histo_exp.data.index import DatasetError, Manifest
from histo_exp.data.split import Split, split_once
from histo_exp.data.split_checks import PARTS, check_splittable, grouping
from histo_exp.settings import Data, check_data
from histo_exp.settings.fields import build
from histo_exp.space import to_plain

log = logging.getLogger(__name__)


def class_label(name: str) -> str:
    """A class as the console says it: IDC's "0" is "class 0", a named class ("benign") its name."""
    return f"class {name}" if name.isdigit() else name


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
    group_by: str = "patient"  # data.group_by: what the split and the CV folds hold out whole

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    @property
    def fingerprint(self) -> str:
        """The cache key's digest (the end of the cache folder's name): same files, same decoding."""
        return self.cache.name.rsplit("-", 1)[-1]

    @property
    def groups(self) -> np.ndarray:
        """What the split and the CV folds hold out whole: the patients, or (``data.group_by=site``) the sites."""
        return self.sites if self.group_by == "site" and self.sites is not None else self.patients

    @property
    def idc(self) -> bool:
        """IDC's two classes ("0" no IDC, "1" IDC): the split table and summary keep their IDC share."""
        return tuple(self.classes) == ("0", "1")

    def profile(self) -> dict[str, int]:
        """Patches, patients (sites where known) and patches of each class in each split part (what a
        tracker records about the data)."""
        out = {}
        for part in PARTS:
            idx = getattr(self.split, part)
            out[f"{part}_patches"] = int(idx.size)
            out[f"{part}_patients"] = int(np.unique(self.patients[idx]).size)
            if self.sites is not None:
                out[f"{part}_sites"] = int(np.unique(self.sites[idx]).size)
            counts = np.bincount(self.labels[idx], minlength=len(self.classes))
            out.update({f"{part}_n_{name}": int(n) for name, n in zip(self.classes, counts, strict=False)})
        return out

    @property
    def kept(self) -> np.ndarray:
        """Rows that decoded (every split index is one of them)."""
        return np.sort(np.concatenate([self.split.train, self.split.val, self.split.test]))

    def patient_counts(self) -> list[tuple[str, str, str, tuple[int, ...]]]:
        """(patient, split part, site or "", patches of each class), sorted by patient; one pass."""
        kept = self.kept
        n = len(self.classes)
        patients, first, inverse = np.unique(self.patients[kept], return_index=True, return_inverse=True)
        counts = np.bincount(inverse.ravel().astype(np.int64) * n + self.labels[kept],
                             minlength=patients.size * n).reshape(patients.size, n)
        sites = [""] * patients.size if self.sites is None else self.sites[kept][first].tolist()
        part = self.split.patients(self.patients)
        return [(str(p), part[str(p)], str(s), tuple(map(int, c)))
                for p, s, c in zip(patients, sites, counts, strict=True)]

    def split_table(self) -> str:
        """CSV of patient -> split part, with each patient's patch count, its IDC share (IDC's classes),
        its site (where known) and its patches of each class (other classes)."""
        out = io.StringIO()
        table = csv.writer(out, lineterminator="\n")
        table.writerow(["patient", "split", "patches"] + ["idc_share"] * self.idc + ["site"] * (self.sites is not None)
                       + ([] if self.idc else [f"n_{name}" for name in self.classes]))
        for patient, part, site, counts in self.patient_counts():
            total = sum(counts)
            table.writerow([patient, part, total] + [f"{counts[1] / total:.3f}"] * self.idc
                           + [site] * (self.sites is not None) + ([] if self.idc else list(counts)))
        return out.getvalue()

    def summary(self, per_patient: bool = False) -> str:
        """What was loaded, for the console."""
        counts = self.patient_counts()  # one pass over the patients serves every line below
        totals = [sum(row[3][c] for row in counts) for c in range(len(self.classes))]
        where = f" at {len({row[2] for row in counts})} sites" if self.sites is not None else ""
        lines = [f"{sum(totals)} patches from {len(counts)} patients{where} in {self.root}: "
                 + ", ".join(f"{n} {class_label(name)}" for name, n in zip(self.classes, totals, strict=True))
                 + (" (IDC)" if self.idc else "")]
        lines += [self._part_line(part, counts) for part in PARTS]
        if per_patient:
            lines += self._patient_lines(counts)
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

    def _part_line(self, part: str, counts: list) -> str:
        """One split part's patches, patients (and sites) and class shares, for the summary."""
        idx = getattr(self.split, part)
        held = sum(row[1] == part for row in counts)
        sites = f", {len({row[2] for row in counts if row[1] == part})} sites" if self.sites is not None else ""
        if not idx.size:
            share = "none held out"
        elif self.idc:
            share = f"{self.labels[idx].mean():.0%} IDC"
        else:
            shares = np.bincount(self.labels[idx], minlength=len(self.classes)) / idx.size
            share = ", ".join(f"{s:.0%} {class_label(name)}" for name, s in zip(self.classes, shares, strict=True))
        return f"  {part:5s}: {idx.size:6d} patches, {held:3d} patients{sites}, {share}"

    def _patient_lines(self, counts: list) -> list[str]:
        """The per-patient table of the summary: split part, site (where known), patches of each class."""
        heads = [class_label(name) for name in self.classes]
        widths = [max(7, len(h)) for h in heads]
        site_width = max([4] + [len(row[2]) for row in counts])
        site = self.sites is not None
        lines = [f"  {'patient':8s}  {'split':5s}" + (f"  {'site':{site_width}s}" if site else "")
                 + "".join(f"  {h:>{w}s}" for h, w in zip(heads, widths, strict=True))]
        for patient, part, where, n in counts:
            lines.append(f"  {patient:8s}  {part:5s}" + (f"  {where:{site_width}s}" if site else "")
                         + "".join(f"  {c:{w}d}" for c, w in zip(n, widths, strict=True)))
        return lines


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


def decode(cfg: Data, manifest: Manifest, progress: bool = True) -> tuple[Cached, np.ndarray]:
    """Ingest ``manifest`` (or reuse its cache): the cache and its usable rows; too many bad files fail."""
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
    return cached, rows


def patch_data(cfg: Data, manifest: Manifest, cached: Cached, split: Split) -> PatchData:
    """The patches with their split; a pixel-identical image under two patients or parts is warned of."""
    data = PatchData(
        images=cached.images, labels=manifest.labels, patients=manifest.patients,
        x=manifest.x, y=manifest.y, split=split,
        root=manifest.root, cache=cached.folder, skipped=cached.skipped, ignored=manifest.ignored,
        padded=cached.padded, resized=cached.resized, classes=manifest.classes, sites=manifest.sites,
        group_by=cfg.group_by,
    )
    warn_duplicates(data)  # from the cache's pixel hashes: milliseconds, so every run that loads says it
    return data


def load(cfg: Data | Mapping, progress: bool = True) -> PatchData:
    """Index, ingest (or reuse the cache) and split the dataset the data settings describe."""
    if isinstance(cfg, Mapping):  # a composed ``data`` group: checked as the runner checks it
        cfg = build(Data, to_plain(cfg), "data")
        check_data(cfg)
    manifest: Manifest = sources.read(cfg, progress)
    log.info("indexed %d patches under %s", len(manifest), manifest.root)
    # The split's checks (every class, enough patients or sites, the fractions, or the parts the source
    # gives) on the file names, before any decoding: a dataset that cannot be split leaves no cache behind.
    groups = grouping(manifest.patients, manifest.sites, cfg.group_by)
    check_splittable(manifest.labels, groups, cfg.val_fraction, cfg.test_fraction, classes=manifest.classes,
                     group=cfg.group_by, parts=manifest.parts)
    if manifest.parts is not None:
        log.info("the source gives each patch's split part (train/val/test): used as given, so "
                 "data.val_fraction and data.test_fraction are ignored (data.group_by=%s is only checked)",
                 cfg.group_by)
    sources.keep_listing(cfg, manifest)
    cached, rows = decode(cfg, manifest, progress)
    split = split_once(cached.folder, rows, manifest.labels, groups, cfg.val_fraction, cfg.test_fraction,
                       cfg.seed, classes=manifest.classes, group=cfg.group_by, parts=manifest.parts)
    return patch_data(cfg, manifest, cached, split)
