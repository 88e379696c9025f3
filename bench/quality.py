"""``make bench-quality``: model quality on patients the model never saw (leave-patients-out on idc-mini).

idc-mini holds 10 real patients, of which only 8863, 8864 and 8867 have class 0 patches. Three
folds each leave out one of those three and two or three of the all-IDC patients. For every row
(a configuration) and seed, each fold runs the real CLI on the other patients
(``data=idc data.test_fraction=0``: the left-out patients are the test) and predicts the
left-out ones with ``python -m histo_exp.evaluate``; the out-of-fold predictions are pooled.

Reported per row: pooled AUC, balanced accuracy at each model's own threshold, AUC within each
patient holding both classes, and wall time. Each fold's predictions are written to
``bench/quality/`` as they finish and a fold already there is skipped, so the benchmark can
run across sessions; ``bench/quality.md`` is rewritten after every fold.

    python bench/quality.py [--rows NAME ...] [--list] [--data PATH]
"""

from __future__ import annotations

import argparse
import csv
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
    base: bool = True  # on top of BASE, without data=idc's preset (False: on top of the current defaults of data=idc)

    def command(self, seed: int) -> list[str]:
        settings = dict(BASE) if self.base else {}
        settings |= dict(o.split("=", 1) for o in (*BUDGETS[self.budget], *self.overrides))
        preset = ["~preset"] if self.base else []
        return ["data=idc", "data.test_fraction=0", *preset, f"seed={seed}", *(f"{k}={v}" for k, v in settings.items())]


ROWS = [
    Row("before", (), (1, 2), budget="full"),  # the defaults of data=idc before this benchmark
    # The defaults of data=idc now (conf/preset/idc.yaml): ensemble-3 above, so seeds 3 and 4 (1 and 2 would repeat it).
    Row("defaults", (), (3, 4), budget="full", base=False),
    Row("fixed", seeds=(1, 2, 3, 4)),  # the baseline of the "fixed" rows below, and of defaults' seed 4: every lever off
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
    Row("small", budget="small"),  # the baseline of the "small" rows below
    Row("small-cv-2", ("tuner.cv_folds=2",), budget="small"),
    Row("small-ensemble-3", ("eval.ensemble=3",), budget="small"),
]


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


def run(cmd: list[str], log: Path) -> float:
    """Run a command, its output to ``log``; the wall time, or exit with the log's tail."""
    start = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    took = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n" + log.read_text()[-3000:])
    return took


def fold_file(row: Row, seed: int, fold: Fold) -> Path:
    return RESULTS / row.name / f"seed{seed}-fold{fold.index}.csv.gz"


def run_fold(row: Row, seed: int, fold: Fold, data: Path, work: Path, machine_line: str) -> None:
    """Train on the fold's patients through the CLI, predict its left-out patients, keep the predictions."""
    out = work / row.name / f"seed{seed}" / f"fold{fold.index}"
    train = tree(data, fold.train, out / "train-patients")
    test = tree(data, fold.test, out / "test-patients")
    py = sys.executable
    train_s = run([py, "-m", "histo_exp", *row.command(seed), f"data.root={train}", f"paths.output_dir={out / 'run'}",
                   "logger=none", "tuner.overwrite=true", "trainer.verbose=0"], out / "train.log")
    scored = out / "evaluate"  # the saved model on the left-out patients, as `python -m histo_exp.evaluate` scores
    predict_s = run([py, "-m", "histo_exp.evaluate", f"model={out / 'run' / 'best_model.keras'}", "data=idc",
                     f"data.root={test}", f"output={scored}", "logger=none", "eval.bootstrap=0", "eval.max_maps=0"],
                    out / "evaluate.log")
    target = fold_file(row, seed, fold)
    target.parent.mkdir(parents=True, exist_ok=True)
    with (scored / "predictions.csv").open() as f, gzip.open(target, "wt", newline="") as g:
        w = csv.writer(g)
        w.writerow(["patient", "label", "prob_idc", "predicted"])
        for r in csv.DictReader(f):
            w.writerow([r["patient"], r["true_label"], r["prob_idc"], r["label"]])
    target.with_suffix("").with_suffix(".json").write_text(json.dumps(
        {"train_s": round(train_s, 1), "predict_s": round(predict_s, 1), "test": fold.test, "train": fold.train,
         "command": ["python -m histo_exp", *row.command(seed)], "machine": machine_line,
         "date": time.strftime("%Y-%m-%d")}, indent=1))


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
            "predict_s": sum(t["predict_s"] for t in times)}


def machine() -> str:
    sys.path.insert(0, str(HERE))
    from run import machine as describe

    return describe()


def wall(train_s: list[float], folds: int) -> str:
    """The longest fold's training time; ``*`` when some folds' times were not training times."""
    return (f"{max(train_s):.0f}" if train_s else "-") + ("*" if len(train_s) < folds else "")


def table(all_folds: list[Fold]) -> str:
    lines = ["| row | overrides | search | seed | pooled AUC | bal. acc. | AUC 8863 / 8864 / 8867 | fold AUCs | "
             "train s per fold (max) |", "|---|---|---|---|---|---|---|---|---|"]
    for row in ROWS:
        done = []
        for seed in row.seeds:
            m = pooled(row, seed, all_folds)
            if m is None:
                continue
            done.append(m)
            pp = " / ".join(f"{m['per_patient'][p]:.3f}" for p in MIXED)
            folds_auc = " ".join(f"{a:.3f}" for a in m["fold_auc"])
            search = row.budget
            lines.append(f"| {row.name} | `{' '.join(row.overrides) or '-'}` | {search} | {seed} | {m['auc']:.4f} | "
                         f"{m['bal_acc']:.4f} | {pp} | {folds_auc} | {wall(m['train_s'], len(all_folds))} |")
        if len(done) > 1:
            auc, acc = (np.array([m[k] for m in done]) for k in ("auc", "bal_acc"))
            lines.append(f"| {row.name} | | | mean of {len(done)} | **{auc.mean():.4f}** (min {auc.min():.4f}) | "
                         f"**{acc.mean():.4f}** (min {acc.min():.4f}) | | | |")
    return "\n".join(lines)


def write_report(all_folds: list[Fold]) -> None:
    fold_lines = "\n".join(f"- fold {f.index}: left out {', '.join(f.test)}" for f in all_folds)
    machines = sorted({f"{j['machine']} ({j['date']})" for j in map(json.loads, map(Path.read_text,
                       RESULTS.glob("*/*.json")))})
    (HERE / "quality.md").write_text(
        "# make bench-quality: leave-patients-out on idc-mini\n\n"
        "Measured on: " + "; ".join(machines) + ".\n\n"
        "Each row trains through the real CLI (`python -m histo_exp data=idc data.test_fraction=0 ...`) on the "
        "patients outside a fold and scores the fold's left-out patients with `python -m histo_exp.evaluate`; "
        "the three folds' predictions are pooled. Balanced accuracy is at each model's own saved threshold. "
        "Search budgets: " + "; ".join(f"{name}: `{' '.join(o) or 'the defaults'}`" for name, o in BUDGETS.items())
        + ". Rows change only what their overrides say, on top of every lever off and without data=idc's preset "
        f"(`~preset {' '.join(f'{k}={v}' for k, v in BASE.items())}`), except "
        + ", ".join(f"`{r.name}`" for r in ROWS if not r.base)
        + ": data=idc as it is, its preset (conf/preset/idc.yaml) included.\n\n"
        f"{fold_lines}\n\n{table(all_folds)}\n\n"
        "\\* a fold whose wall time is not a training time (its JSON's `timing_note` says why) is left out of the "
        "max. Wall times are as measured on the machine above, with whatever else ran on it at the time.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", help="row names to run (default: all, in order)")
    parser.add_argument("--seeds", type=int, nargs="*", help="only these of each row's seeds (default: all)")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--data", type=Path, default=DATA, help="the idc-mini folder")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "histo_exp" / "bench" / "quality")
    args = parser.parse_args()
    if args.list:
        for row in ROWS:
            print(f"{row.name:22s} seeds {row.seeds}  {row.budget:6s} {' '.join(row.overrides)}")
        return
    by_name = {r.name: r for r in ROWS}
    wanted = [by_name[n] for n in args.rows if n in by_name] if args.rows else ROWS  # in the order asked
    unknown = set(args.rows or ()) - {r.name for r in ROWS}
    if unknown:
        sys.exit(f"unknown rows {sorted(unknown)}; --list shows them")
    data = args.data.resolve()
    all_folds = folds(data)
    machine_line = machine()
    for row in wanted:
        for seed in (s for s in row.seeds if not args.seeds or s in args.seeds):
            for fold in all_folds:
                if fold_file(row, seed, fold).exists():
                    continue
                print(f"{row.name} seed {seed} fold {fold.index} (left out {', '.join(fold.test)}) ...", flush=True)
                run_fold(row, seed, fold, data, args.work, machine_line)
                write_report(all_folds)
            m = pooled(row, seed, all_folds)
            if m:
                print(f"{row.name} seed {seed}: pooled AUC {m['auc']:.4f}, balanced accuracy {m['bal_acc']:.4f}",
                      flush=True)
    write_report(all_folds)
    print(f"written to {HERE / 'quality.md'}")


if __name__ == "__main__":
    main()
