"""Synthetic H&E-like patches: 2 classes in the exact IDC folder and file-name layout, N > 2 in the
folder layout ``<class name>/<patient>/<image>`` (classes ``class 0`` ... ``class N-1``).

Pink stroma with purple nuclei; IDC patches have denser, larger, darker and more irregular
nuclei. The tumour is a region of each synthetic slide, so labels are spatially coherent,
and each patient has its own stain tint, so a patient-level split matters. Appearance is
driven by a noisy tumour intensity, so the classes overlap: learnable, not trivial. With N
classes the tumour is N - 1 nested bands of equal area, each a grade denser than the one around it.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from histo_exp.data.build_once import build_folder

PATCH = 50
EOSIN = np.array([232.0, 158.0, 200.0])
HEMATOXYLIN = np.array([105.0, 60.0, 150.0])
DONE = "synthetic.json"
GRADE_SPREAD = 0.1  # more than 2 classes: the noise on a grade's intensity (grades are 1 / (N - 1) apart)


@dataclass(frozen=True)
class SyntheticSpec:
    """What a synthetic dataset is made from; the same spec always makes the same files."""

    patients: int = 12
    patches_per_patient: int = 200
    seed: int = 0
    first_patient_id: int = 90001
    total: int | None = None  # if set: this many patches, spread unevenly over the patients
    classes: int = 2  # 2: IDC's layout; more: the folder layout, one folder per class

    def record(self) -> dict:
        """What ``synthetic.json`` holds: a 2-class spec as before classes could be more, so sets made then count."""
        spec = asdict(self)
        if self.classes == 2:
            del spec["classes"]
        return spec

    def folder(self, root: Path) -> Path:
        """Where the set is made: ``root`` for 2 classes, a sibling named for the count otherwise, so that
        one ``data.root`` serves every count."""
        return Path(root) if self.classes == 2 else Path(root).with_name(f"{Path(root).name}_c{self.classes}")

    def class_names(self) -> tuple[str, ...]:
        """The labels' names: IDC's ("0", "1"), else ``class 0`` ... (folder names, in label order)."""
        return ("0", "1") if self.classes == 2 else tuple(f"class {k}" for k in range(self.classes))

    def counts(self) -> list[int]:
        """Patches per patient."""
        if self.total is None:
            return [self.patches_per_patient] * self.patients
        weights = np.random.default_rng([self.seed, 999]).lognormal(0.0, 0.6, self.patients)
        counts = np.floor(weights / weights.sum() * self.total).astype(int)
        counts[: self.total - counts.sum()] += 1
        return counts.tolist()


def _patient_slide(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid cells of the patient's tissue and each cell's distance from the tumour's centre (1: its edge)."""
    side = int(np.ceil(np.sqrt(n / 0.8)))
    cells = np.stack(np.divmod(rng.permutation(side * side)[:n], side), axis=1)
    share = rng.uniform(0.12, 0.6)
    centre = rng.uniform(0.25, 0.75, size=2) * side
    radii = np.sqrt(share * side * side / np.pi) * np.array([1.0, rng.uniform(0.6, 1.4)])
    return cells, np.sqrt((((cells + 0.5 - centre) / radii) ** 2).sum(axis=1))


def _grades(d: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's label and the tumour intensity it is drawn with.

    2 classes: a smooth intensity, IDC above one half. More: N nested bands of equal area (by squared
    distance, out to twice the tumour's area), the innermost the highest class, drawn at its grade's intensity.
    """
    if classes == 2:
        intensity = 1.0 / (1.0 + np.exp((d - 1.0) * 6.0))
        return (intensity > 0.5).astype(int), intensity
    labels = np.maximum(classes - 1 - np.floor(d**2 * classes / 2).astype(int), 0)
    return labels, labels / (classes - 1)


def _render(rng: np.random.Generator, t: float, tint: np.ndarray, width: int, spread: float = 0.2) -> np.ndarray:
    """One RGB patch for a tumour intensity ``t`` (0 = benign stroma, 1 = IDC), blurred by ``spread``."""
    t = float(np.clip(t + rng.normal(0.0, spread), 0.0, 1.0))
    low = cv2.resize(rng.normal(0.0, 1.0, (6, 6)), (PATCH, PATCH), interpolation=cv2.INTER_CUBIC)
    img = EOSIN * tint[0] * (1.0 - 0.12 * t) + low[..., None] * 14.0
    for _ in range(rng.integers(0, 3)):
        if rng.random() < 0.35:
            c = tuple(int(v) for v in rng.integers(0, PATCH, 2))
            cv2.circle(img, c, int(rng.integers(4, 12)), (248.0, 244.0, 246.0), -1)
    for _ in range(rng.integers(2, 6)):
        p0, p1 = rng.integers(-10, PATCH + 10, (2, 2))
        cv2.line(img, tuple(map(int, p0)), tuple(map(int, p1)), tuple(EOSIN * tint[0] * 0.85),
                 int(rng.integers(1, 3)))
    count = rng.poisson(8.0 + 28.0 * t)
    radius = 1.3 + 1.1 * t
    irregular = 0.08 + 0.35 * t
    dark = HEMATOXYLIN * tint[1] * (1.05 - 0.25 * t)
    angles = np.linspace(0.0, 2 * np.pi, 10, endpoint=False)
    for _ in range(count):
        centre = rng.uniform(0, PATCH, 2)
        r = radius * rng.uniform(0.7, 1.3) * (1.0 + irregular * rng.normal(0.0, 1.0, angles.size))
        r = np.clip(r, 0.8, None) * np.array([[1.0], [rng.uniform(0.6, 1.0)]])
        rot = rng.uniform(0, np.pi)
        xs = centre[0] + r[0] * np.cos(angles + rot)
        ys = centre[1] + r[1] * np.sin(angles + rot)
        pts = np.round(np.stack([xs, ys], axis=1)).astype(np.int32)
        cv2.fillPoly(img, [pts], tuple(dark * rng.uniform(0.85, 1.15)))
    img = cv2.GaussianBlur(img, (0, 0), 0.7) + rng.normal(0.0, 5.0, img.shape)
    return np.clip(img[:, :width], 0, 255).astype(np.uint8)


def _stroma_hue(label: int, classes: int) -> np.ndarray:
    """More than 2 classes: each class's own shift of the stroma's colour (rows: eosin, hematoxylin), a cue
    that is not ordered by grade, so a middle class stands apart from both of its neighbours."""
    phase = 2 * np.pi * label / classes + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
    return np.stack([1.0 + 0.05 * np.cos(phase), np.ones(3)])


def _write_patient(tmp: Path, spec: SyntheticSpec, k: int, n: int) -> None:
    """Render and write one patient's patches (its own RNG: the same files for any workers)."""
    pid = str(spec.first_patient_id + k)
    rng = np.random.default_rng([spec.seed, k])
    tint = rng.normal(1.0, 0.07, (2, 3)).clip(0.75, 1.25)
    cells, distance = _patient_slide(rng, n)
    labels, intensity = _grades(distance, spec.classes)
    names = spec.class_names()
    edge = cells[:, 1].max()
    for (row, col), label, t in zip(cells, labels, intensity, strict=True):
        width = int(rng.integers(30, PATCH)) if col == edge and rng.random() < 0.5 else PATCH
        patch = (_render(rng, t, tint, width) if spec.classes == 2
                 else _render(rng, t, tint * _stroma_hue(label, spec.classes), width, GRADE_SPREAD))
        folder = tmp / pid / str(label) if spec.classes == 2 else tmp / names[label] / pid
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{pid}_idx5_x{col * PATCH + 1}_y{row * PATCH + 1}_class{label}.png"
        cv2.imwrite(str(folder / name), cv2.cvtColor(patch, cv2.COLOR_RGB2BGR))


def generate(root: Path, spec: SyntheticSpec, workers: int = 1) -> Path:
    """Write the dataset under ``spec.folder(root)`` unless a complete copy of this spec is there; returns it.

    Files go to a private sibling folder first and are moved into place at the end, so a killed
    run never leaves a half-made dataset that looks complete, and parallel jobs do not collide.
    """
    root = spec.folder(root)
    done = root / DONE
    if done.exists():
        if json.loads(done.read_text()) == spec.record():
            return root
        raise FileExistsError(
            f"{root} holds a synthetic dataset made from another spec; remove it or pick "
            "another data.root"
        )
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} is not empty and holds no synthetic dataset; refusing to write one over it "
            "(for your own data use data=idc)"
        )

    def build(tmp: Path) -> None:
        jobs = [(tmp, spec, k, n) for k, n in enumerate(spec.counts())]
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
                list(pool.map(_write_patient, *zip(*jobs, strict=True)))
        else:
            for job in jobs:
                _write_patient(*job)
        (tmp / DONE).write_text(json.dumps(spec.record()))

    build_folder(root, build, lambda final: (final / DONE).exists())
    return root
