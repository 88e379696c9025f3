"""``make bench-quality``: model quality on patients the model never saw (leave-patients-out on idc-mini).

idc-mini holds 10 real patients, of which only 8863, 8864 and 8867 have class 0 patches. Three
folds each leave out one of those three and two or three of the all-IDC patients. For every row
(a configuration) and seed, each fold runs the real CLI on the other patients
(``data=idc data.test_fraction=0``: the left-out patients are the test) and predicts the
left-out ones with ``python -m histo_exp.evaluate``; the out-of-fold predictions are pooled.

Reported per row: pooled AUC, balanced accuracy at each model's own threshold, AUC within each
patient holding both classes, wall time, and the row against its reference on the seeds both ran
(``bench/paired.py``: a bootstrap interval over seeds and patients). Each fold's predictions are
written to ``bench/quality/`` as they finish and a fold already there is skipped, so the benchmark
runs in pieces across sessions, seed by seed; ``bench/quality.md`` (``bench/quality_report.py``) is
rewritten after every fold.

    python bench/quality.py [--rows NAME ...] [--seeds S ...] [--list] [--data PATH] [--work DIR]
"""

from __future__ import annotations

import argparse
import csv
import functools
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import Pooled  # noqa: E402
from quality_report import report  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "quality"  # one gzipped CSV (+ JSON timing) per row, seed and fold
DATA = REPO.parent / "shared" / "data" / "idc-mini"
MIXED = ("8863", "8864", "8867")  # the only patients with class 0 patches
# Search budgets. "fixed": one trial of one mid-sized network, for the levers that do not choose
# between trials (augmentation, colour, architecture, refit, TTA); "small": a 4-trial search, for
# those that do (patient folds, ensembles); "full": the defaults' search.
BUDGETS = {
    "fixed": ("tuner.max_trials=1", "model.blocks=2", "model.filters=32", "model.kernel_size=3",
              "model.activation=relu", "optimizer.learning_rate=0.001", "trainer.epochs=5"),
    "small": ("tuner.max_trials=4", "trainer.epochs=5"),
    "full": (),
}


# Every lever off, as the defaults were before the levers existed: each row names only what it changes,
# so a row means the same after the defaults of data=idc move.
BASE = {"data.color": "rgb", "data.normalize": "none", "data.augment.flip": "true", "data.augment.rotate90": "true", "data.augment.hed": "0",
        "data.augment.brightness": "0", "data.augment.contrast": "0", "data.augment.saturation": "0",
        "data.augment.hue": "0", "tuner.cv_folds": "1", "trainer.refit": "none", "eval.ensemble": "1",
        "eval.tta": "false", "model.batch_norm": "false", "model.head": "flatten", "model.convs_per_block": "1"}


@dataclass(frozen=True)
class Row:
    name: str
    overrides: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (1, 2, 3)  # one trial of one network swings with the seed: three of them
    budget: str = "fixed"  # a key of BUDGETS
    base: bool = True  # on top of BASE (False: data=idc as it is, plus the overrides)
    reference: str | None = "fixed"  # the row it is compared with, seed by seed (bench/paired.py)
    parent: str | None = None  # derived: the parent's searches, their final step run again with the overrides
    code: str | None = None  # a commit: trained from a git worktree of it (scored by today's evaluate)...
    patch: str | None = None  # ...with this patch of bench/ applied, where the commit lacks what the folds need

    @property
    def described(self) -> str:
        """The overrides as the report shows them, PRESET by its name."""
        parts, rest = [], self.overrides
        if rest[:len(PRESET)] == PRESET:
            parts, rest = ["PRESET"], rest[len(PRESET):]
        if rest:
            parts.append(f"`{' '.join(rest)}`")
        return " + ".join(parts) or "-"

    def command(self, seed: int) -> list[str]:
        if self.parent:
            return [*by_name(self.parent).command(seed), *self.overrides]
        settings = dict(BASE) if self.base else {}
        settings |= dict(o.split("=", 1) for o in (*BUDGETS[self.budget], *self.overrides))
        return ["data=idc", "data.test_fraction=0", f"seed={seed}", *(f"{k}={v}" for k, v in settings.items())]


CANDIDATE_SEEDS = (1, 2, 3, 4, 5)  # every candidate for a default; a comparison row at least 3
# The defaults data=idc had from issue 10 (bd6b621) until issue 22 (conf/preset/idc.yaml, since removed):
# one 2-block network, Adam's learning rate drawn from 0.0005-0.002, 3 trials averaged into the kept model.
PRESET = ("model.blocks=2", "model.filters=32", "model.kernel_size=3", "model.activation=relu",
          "optimizer.learning_rate={min: 0.0005, max: 0.002, log: true}", "tuner.max_trials=3", "eval.ensemble=3")
# Issue 22: the candidates for data=idc's defaults, each compared with the seed's own search on the same seeds.
DEFAULTS = [
    Row("search", (), CANDIDATE_SEEDS, "full", base=False, reference=None),  # the reference: data=idc's default
    Row("search-ensemble-3", ("eval.ensemble=3",), CANDIDATE_SEEDS, "full", base=False, reference="search",
        parent="search"),  # the same searches, their 3 best trials averaged
    Row("preset", PRESET, CANDIDATE_SEEDS, "full", base=False, reference="search"),
    Row("preset-long", (*PRESET, "trainer.epochs=15", "trainer.early_stopping_patience=3"), CANDIDATE_SEEDS,
        "full", base=False, reference="search"),  # longer training, stopped on validation AUC
    Row("preset-gray", (*PRESET, "data.color=gray"), CANDIDATE_SEEDS, "full", base=False, reference="search"),
    # More networks averaged: the pooled AUC suffers most from one network's luck on one patient.
    Row("preset-ensemble-5", (*PRESET, "tuner.max_trials=5", "eval.ensemble=5"), CANDIDATE_SEEDS, "full",
        base=False, reference="search"),
    # The combination the first 3 seeds support: the one lever that helped on every seed (more networks
    # averaged: preset-ensemble-5 over the preset) on the strongest row, the search; its 5 best trials.
    Row("search-ensemble-5", ("eval.ensemble=5",), CANDIDATE_SEEDS, "full", base=False, reference="search",
        parent="search"),
    # The search before the augmentation layers, the new loader and the Bayesian acquisition. That commit
    # needs test patients; its patch lets data.test_fraction=0 hold none, as today (the search is untouched).
    Row("search-a145b09", (), (1, 2, 3), "full", base=False, reference="search", code="a145b09",
        patch="a145b09-no-test-patients.patch"),
]
# Issue 10: single levers on one network (or a small search), each against the row it varies.
LEVERS = [
    Row("before", (), (1, 2), budget="full", reference=None),  # the defaults of data=idc before this benchmark
    # The defaults of data=idc then (PRESET): ensemble-3 below, so seeds 3 and 4 (1 and 2 would repeat it).
    Row("defaults", PRESET, (3, 4), budget="full", base=False, reference=None),
    Row("fixed", seeds=(1, 2, 3, 4), reference=None),  # the baseline of the "fixed" rows below: every lever off
    Row("gray", ("data.color=gray",)),
    Row("no-flip-rotate", ("data.augment.flip=false", "data.augment.rotate90=false")),
    Row("hed-0.05", ("data.augment.hed=0.05",)),
    Row("hed-0.1", ("data.augment.hed=0.1",)),
    Row("bright-contrast-0.1", ("data.augment.brightness=0.1", "data.augment.contrast=0.1")),
    Row("bright-contrast-no-flip", ("data.augment.brightness=0.1", "data.augment.contrast=0.1",
                                    "data.augment.flip=false", "data.augment.rotate90=false")),
    Row("sat-hue", ("data.augment.saturation=0.2", "data.augment.hue=0.05")),
    Row("gray-hed-0.05", ("data.color=gray", "data.augment.hed=0.05")),
    Row("normalize", ("data.normalize=per_patch",)),
    Row("normalize-hed-0.05", ("data.normalize=per_patch", "data.augment.hed=0.05")),
    Row("refit-trainval", ("trainer.refit=trainval",)),
    Row("tta", ("eval.tta=true",)),
    Row("batch-norm", ("model.batch_norm=true",)),
    Row("gap-head", ("model.head=gap",)),
    Row("convs-2", ("model.convs_per_block=2",)),
    Row("cv-2", ("tuner.cv_folds=2",), (1, 2)),  # one trial: no choice to make, so this is the 2 fold models averaged
    # Three trials around fixed's learning rate, the kept model their average: an ensemble at three times fixed's cost.
    Row("ensemble-3", ("tuner.max_trials=3", "optimizer.learning_rate={min: 0.0005, max: 0.002, log: true}",
                       "eval.ensemble=3"), (1, 2)),
    Row("small", budget="small", reference=None),  # the baseline of the "small" rows below
    Row("small-cv-2", ("tuner.cv_folds=2",), budget="small", reference="small"),
    Row("small-ensemble-3", ("eval.ensemble=3",), budget="small", reference="small"),
]
ROWS = [*DEFAULTS, *LEVERS]
REPORT_GROUPS = {"The defaults of data=idc (issue 22): every candidate against the seed's own search": DEFAULTS,
                 "Single levers (issue 10), each against the row it varies": LEVERS}


def by_name(name: str) -> Row:
    return next(r for r in ROWS if r.name == name)


@dataclass
class Fold:
    index: int
    test: list[str]
    train: list[str] = field(default_factory=list)


def folds(data: Path) -> list[Fold]:
    """Three folds: one patient with class 0 each, the all-IDC patients dealt round-robin."""
    patients = sorted(p.name for p in data.iterdir() if p.is_dir())
    missing = [p for p in MIXED if p not in patients]
    if missing:
        raise SystemExit(f"{data} lacks patients {missing}: bench-quality needs idc-mini (../shared/data/idc-mini)")
    rest = [p for p in patients if p not in MIXED]
    out = [Fold(i, [mixed, *rest[i::len(MIXED)]]) for i, mixed in enumerate(MIXED)]
    for fold in out:
        fold.train = [p for p in patients if p not in fold.test]
    return out


def tree(data: Path, patients: list[str], where: Path) -> Path:
    """A folder of links to the given patients' folders: the CLI sees only them, nothing is copied."""
    if where.exists():
        shutil.rmtree(where)
    where.mkdir(parents=True)
    for patient in patients:
        (where / patient).symlink_to(data / patient, target_is_directory=True)
    return where


# Bench runs draw nothing and bootstrap nothing: neither changes the model or its predictions.
CHEAP = ("logger=none", "trainer.verbose=0", "eval.bootstrap=0", "eval.max_maps=0")
CHEAP_NOW = (*CHEAP, "eval.plots=false")  # eval.plots is newer than some of the commits rows run
EVALUATE = ("logger=none", "eval.bootstrap=0", "eval.max_maps=0", "eval.plots=false")


def run(cmd: list[str], log: Path, cwd: Path = REPO) -> float:
    """Run a command, its output to ``log``; the wall time, or exit with the log's tail."""
    start = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    took = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n" + log.read_text()[-3000:])
    return took


def fold_file(row: Row, seed: int, fold: Fold) -> Path:
    return RESULTS / row.name / f"seed{seed}-fold{fold.index}.csv.gz"


def worktree(commit: str, patch: str | None, work: Path) -> Path:
    """A git worktree of ``commit`` with ``patch`` applied (made once): ``python -m histo_exp`` run there
    imports its package."""
    where = work / f"code-{commit}"
    if not (where / ".patched").exists():
        if where.exists():
            shutil.rmtree(where)
        subprocess.run(["git", "worktree", "prune"], cwd=REPO, check=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(where), commit], cwd=REPO, check=True,
                       capture_output=True)
        if patch:
            subprocess.run(["git", "apply", str(HERE / patch)], cwd=where, check=True)
        (where / ".patched").write_text(patch or "")
    return where


def code_version(commit: str | None) -> str:
    """The commit a row's model was trained with (the working tree's: the last commit that changed the package or
    its config); "+changes" when the working tree's package differs from it."""
    git = functools.partial(subprocess.run, cwd=REPO, capture_output=True, text=True)
    short = git(["git", "rev-parse", "--short", commit] if commit else
                ["git", "log", "-1", "--format=%h", "--", "histo_exp", "conf"]).stdout.strip()
    changed = not commit and git(["git", "status", "--porcelain", "histo_exp", "conf"]).stdout.strip()
    return short + ("+changes" if changed else "")


def fold_dir(row: Row, seed: int, fold: Fold, work: Path) -> Path:
    return work / row.name / f"seed{seed}" / f"fold{fold.index}"


def train(row: Row, seed: int, fold: Fold, data: Path, work: Path) -> float:
    """The row's search on the fold's training patients, through the CLI; its wall time. A derived row
    resumes its parent's finished search (no trial runs again) and only makes its kept model anew."""
    out = fold_dir(row, seed, fold, work)
    patients = tree(data, fold.train, out / "train-patients")
    code = worktree(row.code, row.patch, work) if row.code else REPO
    search = ["tuner.overwrite=true"]
    if row.code:  # its own decoded cache: an older commit's cache format is not today's
        search.append(f"paths.cache_dir={work / f'cache-{row.code}'}")
    if row.parent:
        parent = fold_dir(by_name(row.parent), seed, fold, work) / "run"
        if not (parent / "best_model.keras").exists():  # its search ran on another machine: run it again here,
            # and record it again, so that the two rows are made from one search
            print(f"  {row.parent}'s search of seed {seed} fold {fold.index} is not here: running it again", flush=True)
            run_fold(by_name(row.parent), seed, fold, data, work, machine())
        search = [f"tuner.directory={parent}"]
    return run([sys.executable, "-m", "histo_exp", *row.command(seed), f"data.root={patients}",
                f"paths.output_dir={out / 'run'}", *search, *(CHEAP if row.code else CHEAP_NOW)],
               out / "train.log", cwd=code)


def run_fold(row: Row, seed: int, fold: Fold, data: Path, work: Path, machine_line: str) -> None:
    """Train on the fold's patients through the CLI, score its left-out patients with today's
    ``python -m histo_exp.evaluate``, keep the predictions."""
    train_s = train(row, seed, fold, data, work)
    out = fold_dir(row, seed, fold, work)
    test = tree(data, fold.test, out / "test-patients")
    scored = out / "evaluate"
    predict_s = run([sys.executable, "-m", "histo_exp.evaluate", f"model={out / 'run' / 'best_model.keras'}",
                     "data=idc", f"data.root={test}", f"output={scored}", *EVALUATE], out / "evaluate.log")
    target = fold_file(row, seed, fold)  # the fold's mark of done: renamed into place last, whole
    target.parent.mkdir(parents=True, exist_ok=True)
    commit = code_version(row.code) + (f" + bench/{row.patch}" if row.patch else "")
    target.with_suffix("").with_suffix(".json").write_text(json.dumps(
        {"train_s": round(train_s, 1), "predict_s": round(predict_s, 1), "test": fold.test, "train": fold.train,
         "command": ["python -m histo_exp", *row.command(seed)], "commit": commit, "machine": machine_line,
         "date": time.strftime("%Y-%m-%d")}, indent=1))
    partial = target.with_name(target.name + ".partial")
    with (scored / "predictions.csv").open() as f, gzip.open(partial, "wt", newline="") as g:
        w = csv.writer(g)
        w.writerow(["patient", "label", "prob_idc", "predicted"])
        for r in csv.DictReader(f):
            w.writerow([r["patient"], r["true_label"], r["prob_idc"], r["label"]])
    os.replace(partial, target)


def read_fold(path: Path) -> dict[str, np.ndarray]:
    with gzip.open(path, "rt") as f:
        rows = list(csv.DictReader(f))
    return {"patient": np.array([r["patient"] for r in rows]), "label": np.array([int(r["label"]) for r in rows]),
            "prob": np.array([float(r["prob_idc"]) for r in rows]), "pred": np.array([int(r["predicted"]) for r in rows])}


def pooled(row: Row, seed: int, all_folds: list[Fold]) -> dict | None:
    """Pooled out-of-fold metrics of one row and seed, or None until every fold is done."""
    paths = [fold_file(row, seed, f) for f in all_folds]
    if not all(p.exists() for p in paths):
        return None
    parts = [read_fold(p) for p in paths]
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    per_patient = {p: roc_auc_score(cat["label"][cat["patient"] == p], cat["prob"][cat["patient"] == p])
                   for p in MIXED}
    times = [json.loads(p.with_suffix("").with_suffix(".json").read_text()) for p in paths]
    return {"auc": roc_auc_score(cat["label"], cat["prob"]),
            "bal_acc": balanced_accuracy_score(cat["label"], cat["pred"]),
            "fold_auc": [roc_auc_score(p["label"], p["prob"]) for p in parts],
            "per_patient": per_patient, "train_s": [t["train_s"] for t in times if "timing_note" not in t],
            "predict_s": sum(t["predict_s"] for t in times), "commits": sorted({t.get("commit", "not recorded") for t in times}),
            "pooled": Pooled(cat["patient"], cat["label"], cat["prob"], cat["pred"])}


def machine() -> str:
    from run import machine as describe

    return describe()


def write_report(all_folds: list[Fold]) -> None:
    results = {row.name: {s: m for s in row.seeds if (m := pooled(row, s, all_folds))} for row in ROWS}
    strata = [list(MIXED), [p for p in sorted({p for f in all_folds for p in f.test}) if p not in MIXED]]
    (HERE / "quality.md").write_text(report(REPORT_GROUPS, results, all_folds, strata, RESULTS, BUDGETS, BASE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", help="row names to run, in this order (default: the candidates for "
                        "data=idc's defaults); a derived row listed with its parent is made right after each of the "
                        "parent's searches, else from them if they are here, else after running them again")
    parser.add_argument("--seeds", type=int, nargs="*", help="only these of each row's seeds (default: all)")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--data", type=Path, default=DATA, help="the idc-mini folder")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "histo_exp" / "bench" / "quality")
    args = parser.parse_args()
    if args.list:
        for row in ROWS:
            print(f"{row.name:22s} seeds {row.seeds}  {row.budget:6s} {row.described}")
        return
    unknown = set(args.rows or ()) - {r.name for r in ROWS}
    if unknown:
        sys.exit(f"unknown rows {sorted(unknown)}; --list shows them")
    wanted = [by_name(n) for n in args.rows] if args.rows else DEFAULTS
    data = args.data.resolve()
    all_folds = folds(data)
    machine_line = machine()
    # Seed by seed, every row of a seed before the next seed: what has run at any time is paired.
    seeds = sorted({s for row in wanted for s in row.seeds if not args.seeds or s in args.seeds})
    for seed in seeds:
        for row in (r for r in wanted if seed in r.seeds):
            for fold in all_folds:
                # a row derived from this one's searches is made right after each search, while it is here
                for r in (row, *(c for c in wanted if c.parent == row.name and seed in c.seeds)):
                    if fold_file(r, seed, fold).exists():
                        continue
                    print(f"{r.name} seed {seed} fold {fold.index} (left out {', '.join(fold.test)}) ...", flush=True)
                    run_fold(r, seed, fold, data, args.work, machine_line)
                    write_report(all_folds)
            m = pooled(row, seed, all_folds)
            if m:
                print(f"{row.name} seed {seed}: pooled AUC {m['auc']:.4f}, balanced accuracy {m['bal_acc']:.4f}",
                      flush=True)
    write_report(all_folds)
    print(f"written to {HERE / 'quality.md'}")


if __name__ == "__main__":
    main()
