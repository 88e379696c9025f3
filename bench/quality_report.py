"""bench/quality.md from ``make bench-quality``'s kept folds: each row's seeds, and each row against its reference
on the seeds both ran (bench/paired.py), with the compute it cost."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from paired import RESAMPLES, compare, spread

MIN_SEEDS = 3  # fewer paired seeds than this: the interval is printed, no verdict drawn


def _wall(train_s: list[float], folds: int) -> str:
    """The longest fold's training time; ``*`` when some folds' times were not training times."""
    return (f"{max(train_s):.0f}" if train_s else "-") + ("*" if len(train_s) < folds else "")


def seeds_table(rows: Sequence, results: Mapping[str, Mapping[int, dict]], folds: int,
                mixed: Sequence[str]) -> list[str]:
    lines = [f"| row | overrides | search | seed | pooled AUC | bal. acc. | AUC {' / '.join(mixed)} | fold AUCs | "
             "train s per fold (max) | code |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        done = results[row.name]
        for seed, m in done.items():
            pp = " / ".join(f"{m['per_patient'][p]:.3f}" for p in mixed)
            folds_auc = " ".join(f"{a:.3f}" for a in m["fold_auc"])
            what = f"{row.parent}'s, then {row.described}" if row.parent else row.described
            lines.append(f"| {row.name} | {what} | {row.budget} | {seed} | {m['auc']:.4f} | {m['bal_acc']:.4f} | {pp} "
                         f"| {folds_auc} | {_wall(m['train_s'], folds)} | {', '.join(m['commits'])} |")
    return lines


def _cost(row, results: Mapping[str, Mapping[int, dict]], folds: int) -> str:
    """Minutes of training per seed (its folds added up; a derived row adds its parent's searches)."""
    minutes = []
    for seed, m in results[row.name].items():
        if len(m["train_s"]) < folds:
            continue
        total = sum(m["train_s"])
        if row.parent:
            parent = results[row.parent].get(seed)
            if parent is None or len(parent["train_s"]) < folds:
                continue
            total += sum(parent["train_s"])
        minutes.append(total / 60)
    return f"{np.mean(minutes):.0f}" if minutes else "-"


def _interval(i) -> str:
    return f"{i.mean:+.4f} [{i.low:+.4f}, {i.high:+.4f}]"


def paired_table(rows: Sequence, results: Mapping[str, Mapping[int, dict]], strata: Sequence[Sequence[str]],
                 folds: int) -> list[str]:
    lines = ["| row | seeds | pooled AUC: mean (spread over seeds) | bal. acc.: mean | against | seeds paired | "
             "pooled AUC difference [95% CI] | | bal. acc. difference [95% CI] | | train minutes per seed |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        done = results[row.name]
        if not done:
            continue
        auc = [m["auc"] for m in done.values()]
        acc = [m["bal_acc"] for m in done.values()]
        head = (f"| {row.name} | {', '.join(map(str, done))} | {np.mean(auc):.4f} ({spread(auc)}) | "
                f"{np.mean(acc):.4f} |")
        cost = _cost(row, results, folds)
        ref = results.get(row.reference or "", {})
        paired = compare({s: m["pooled"] for s, m in done.items()}, {s: m["pooled"] for s, m in ref.items()},
                         strata) if ref else None
        if paired is None:
            lines.append(f"{head} {row.reference or '(reference)'} | - | | | | | {cost} |")
            continue
        auc, acc = ((f"**{i.verdict}**" if len(paired.seeds) >= MIN_SEEDS else "too few seeds")
                    for i in (paired.auc, paired.bal_acc))
        lines.append(f"{head} {row.reference} | {', '.join(map(str, paired.seeds))} | {_interval(paired.auc)} | "
                     f"{auc} | {_interval(paired.bal_acc)} | {acc} | {cost} |")
    return lines


def report(groups: Mapping[str, Sequence], results: Mapping[str, Mapping[int, dict]], all_folds: Sequence,
           strata: Sequence[Sequence[str]], kept: Path, budgets: Mapping[str, Sequence[str]],
           base: Mapping[str, str]) -> str:
    """The whole of bench/quality.md."""
    folds = len(all_folds)
    dates: dict[str, set[str]] = {}
    for j in map(json.loads, map(Path.read_text, kept.glob("*/*.json"))):
        dates.setdefault(j["machine"], set()).add(j["date"])
    machines = [f"{machine} ({', '.join(sorted(days))})" for machine, days in sorted(dates.items())]
    fold_lines = "\n".join(f"- fold {f.index}: left out {', '.join(f.test)}" for f in all_folds)
    out = [
        "# make bench-quality: leave-patients-out on idc-mini", "",
        "Measured on: " + "; ".join(machines) + ".", "",
        "Each row trains through the real CLI (`python -m histo_exp data=idc data.test_fraction=0 ...`) on the "
        "patients outside a fold and scores the fold's left-out patients with `python -m histo_exp.evaluate`; the "
        "three folds' predictions are pooled. Balanced accuracy is at each model's own saved threshold. Bench runs "
        "draw no figures and bootstrap nothing (`eval.plots=false eval.bootstrap=0 eval.max_maps=0`): neither "
        "changes a model or a prediction. A row run from an older commit draws that commit's figures (it has no "
        "`eval.plots`) and decodes its own cache on its first fold; its cost includes both.", "",
        fold_lines, "",
        "**Paired comparisons** (`bench/paired.py`): a row against its reference on the seeds both ran (the same "
        "folds, the same seed). The difference is the mean over those seeds of (row - reference); its 95% interval "
        f"is a bootstrap ({RESAMPLES:,} resamples). Every seed leaves out the same patients, so seeds and patients "
        "are crossed: each resample draws the seeds with replacement and one resample of the left-out patients "
        f"(with replacement, within two strata: the {len(strata[0])} patients holding both classes and the "
        f"{len(strata[1])} holding IDC only, so every resample holds class 0), and applies that one patient draw to "
        "every drawn seed and to both rows. A row is called "
        f"**better** or **worse** only when the interval excludes 0, else **no difference shown**, and only on at "
        f"least {MIN_SEEDS} paired seeds (on fewer, the interval is given and no call made). The spread over "
        "seeds is the standard deviation and range of the row's pooled AUC. Train minutes per seed: the three "
        "folds' searches added up (a row made from another row's searches adds their cost).", "",
    ]
    for title, rows in groups.items():
        out += [f"## {title}", "", *paired_table(rows, results, strata, folds), "",
                "Each seed:", "", *seeds_table(rows, results, folds, strata[0]), ""]
    out += [
        "The first table's rows are `data=idc` as it is (the seed's own search) plus their overrides; the "
        "rows named preset add theirs to the defaults data=idc had until issue 22 (conf/preset/idc.yaml, since removed; "
        "`PRESET` in bench/quality.py). Rows of the second table change only what their overrides say, on top of "
        f"every lever off (`{' '.join(f'{k}={v}' for k, v in base.items())}`), with the "
        "search budgets " + "; ".join(f"{name}: `{' '.join(o) or 'the defaults'}`" for name, o in budgets.items())
        + "; except " + ", ".join(f"`{r.name}`" for rows in list(groups.values())[1:] for r in rows if not r.base)
        + ": data=idc as it was then. Each fold was measured by the code its `code` column "
        "names.", "",
        "\\* a fold whose wall time is not a training time (its JSON's `timing_note` says why) is left out of the "
        "max and the cost. Wall times are as measured on the machines above, with whatever else ran on them.", ""]
    return "\n".join(out)
