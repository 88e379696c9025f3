"""``make bench``: our data pipeline against the original method's, on a full-size IDC tree.

Makes (once, cached) 277,524 patches in the IDC layout: copies of a real sample's PNGs under new
patient ids (``--from DIR``; ``make bench`` passes ../shared/data/idc-mini when it is there), or
else synthetic ones from 279 patients. Then measures, each in a fresh process so peak RSS is its own:
  1-2. ingest throughput and peak RSS: our threaded decode into the uint8 cache vs the original
       loop (cv2.imread + resize per file into a list, np.array, astype(float32) / 255), and
       against the cores' decode limit (cores x the rate of read + cv2.imdecode on one thread);
  3.   cached reload time (index + opening the memory map), and the whole ``histo_exp.prepare``
       process on a prepared set;
  4.   training throughput of one epoch of the default CNN fed by our batches vs model.fit on an
       in-memory float32 array of the same images, and the peak RSS of an epoch on the full set;
  5.   the batch loader alone: shuffled batches of 64 per second from one thread.
Prints a table and writes bench/results.md with the machine description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
TOTAL, PATIENTS = 277_524, 279
TRAIN_SUBSET = 40_000  # images per throughput epoch (the float baseline holds them all in RAM)
DECODE_SAMPLE = 40_000  # files timed for the one-core decode rate


def bench_dir() -> Path:
    return Path(os.environ.get("HISTO_EXP_BENCH", Path.home() / ".cache" / "histo_exp" / "bench"))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def copies_of(sample: Path) -> Path:
    """A full-size tree (``TOTAL`` patches) of real patches: the sample's PNGs again and again under
    new patient ids, hard-linked where the file system allows (they decode like real data, which the
    synthetic patches do not: those decode about twice as fast)."""
    from histo_exp.data.index import index

    root = bench_dir() / f"idc-copies-{sample.name}"
    done = root / ".complete"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    m = index(sample)
    t = time.perf_counter()
    made = 0
    for copy in range(TOTAL // len(m) + 1):
        for rel, patient in zip(m.paths, m.patients, strict=True):
            if made == TOTAL:
                break
            new = f"{copy + 1}{patient}"  # a new patient id per copy
            folder, label, name = Path(rel).parts
            dest = root / new / label / (new + name[len(folder):])
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(m.root / rel, dest)
            except OSError:
                shutil.copyfile(m.root / rel, dest)
            made += 1
    done.touch()
    print(f"made {made} patches from copies of {sample} in {time.perf_counter() - t:.0f} s under {root}", flush=True)
    return root


def dataset_root() -> Path:
    from histo_exp.data.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(patients=PATIENTS, total=TOTAL, seed=7, first_patient_id=10001)
    root = bench_dir() / "idc-full"
    t = time.perf_counter()
    generate(root, spec, workers=os.cpu_count() or 2)
    took = time.perf_counter() - t
    if took > 5:
        print(f"generated {TOTAL} patches in {took:.0f} s under {root}", flush=True)
    return root


# --- measurements, each run in its own process --------------------------------------------

def measure_original(root: Path) -> dict:
    """The original method: one file at a time, a Python list, a float32 copy divided by 255."""
    import cv2
    import numpy as np

    from histo_exp.data.index import index

    m = index(root)
    t = time.perf_counter()
    data, labels = [], []
    for rel, label in zip(m.paths, m.labels, strict=True):
        img = cv2.imread(str(m.root / rel))
        data.append(cv2.resize(img, (50, 50), interpolation=cv2.INTER_AREA))
        labels.append(label)
    x = np.array(data)
    x = x.astype("float32") / 255
    took = time.perf_counter() - t
    return {"patches": len(x), "seconds": took, "rate": len(x) / took, "peak_rss_mib": peak_rss_mib()}


def measure_ours(root: Path, cache: Path) -> dict:
    from histo_exp.data.cache import ingest
    from histo_exp.data.index import index

    t = time.perf_counter()
    m = index(root)
    cached = ingest(m, cache, 50, progress=False)
    took = time.perf_counter() - t
    assert cached.built
    return {"patches": int(cached.usable.sum()), "seconds": took, "rate": len(m) / took,
            "peak_rss_mib": peak_rss_mib()}


def measure_decode(root: Path) -> dict:
    """The decode limit of one core: read each file and ``cv2.imdecode`` it, one thread, nothing else."""
    import cv2
    import numpy as np

    from histo_exp.data.index import index

    m = index(root)
    files = [str(m.root / rel) for rel in m.paths[:DECODE_SAMPLE]]
    t = time.perf_counter()
    for path in files:
        with open(path, "rb") as f:
            cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)
    took = time.perf_counter() - t
    return {"patches": len(files), "seconds": took, "rate": len(files) / took}


def time_prepare(root: Path, cache: Path, runs: int = 5) -> dict:
    """Wall time of ``python -m histo_exp.prepare`` on a dataset it has prepared before (process
    start to exit: imports, config, listing, cache and split), ``runs`` times after one warm-up."""
    cmd = [sys.executable, "-m", "histo_exp.prepare", "data=idc", f"data.root={root}",
           f"data.cache_dir={cache}", f"hydra.run.dir={cache.parent / 'prepare-runs'}"]
    times = []
    for _ in range(runs + 1):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    times = sorted(times[1:])
    print(f"  prepare (cached): {[round(t, 2) for t in times]} s", flush=True)
    return {"median": times[len(times) // 2], "min": times[0], "max": times[-1], "runs": runs}


def measure_reload(root: Path, cache: Path) -> dict:
    from histo_exp.data.cache import ingest
    from histo_exp.data.index import index

    t = time.perf_counter()
    cached = ingest(index(root), cache, 50, progress=False)
    took = time.perf_counter() - t
    assert not cached.built
    return {"seconds": took, "cache_mib": cached.nbytes / 2**20, "peak_rss_mib": peak_rss_mib()}


def measure_loader(root: Path, cache: Path) -> dict:
    """One thread pulling shuffled training batches of 64 from the full cache, as ``fit`` asks for them."""
    import numpy as np

    from histo_exp.data.batches import PatchBatches
    from histo_exp.data.cache import ingest
    from histo_exp.data.index import index

    m = index(root)
    cached = ingest(m, cache, 50, progress=False)
    batches = PatchBatches(cached.images, m.labels, np.flatnonzero(cached.usable), 64, shuffle=True)
    for i in range(50):  # page cache and allocator warm-up
        batches[i]
    n = min(len(batches) - 50, 3000)
    t = time.perf_counter()
    for i in range(50, 50 + n):
        batches[i]
    took = time.perf_counter() - t
    return {"images": n * 64, "seconds": took, "rate": n * 64 / took}


def _model():
    import keras

    from histo_exp.model.cnn import IdcAUC, build_cnn

    model = build_cnn((50, 50, 3), blocks=2, filters=32, kernel_size=3, activation="relu")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                  metrics=[IdcAUC(name="auc")])
    return model


def measure_train(root: Path, cache: Path, mode: str) -> dict:
    """One timed epoch (after a short warm-up that compiles the step) of the default CNN."""
    import numpy as np

    from histo_exp.data.batches import PatchBatches
    from histo_exp.data.cache import ingest
    from histo_exp.data.index import index

    m = index(root)
    cached = ingest(m, cache, 50, progress=False)
    rows = np.flatnonzero(cached.usable)
    rows = rows if mode == "ours-full" else rows[:TRAIN_SUBSET]
    model = _model()
    if mode == "float":
        x = np.asarray(cached.images[rows]).astype("float32")  # the baseline's in-memory array
        y = np.eye(2, dtype="float32")[m.labels[rows]]
        model.fit(x[:640], y[:640], batch_size=64, epochs=1, verbose=0)
        t = time.perf_counter()
        model.fit(x, y, batch_size=64, epochs=1, shuffle=True, verbose=0)
    else:
        batches = PatchBatches(cached.images, m.labels, rows, 64, shuffle=True)
        model.fit(batches, epochs=1, steps_per_epoch=10, verbose=0)
        t = time.perf_counter()
        model.fit(batches, epochs=1, verbose=0)
    took = time.perf_counter() - t
    return {"images": int(rows.size), "seconds": took, "rate": rows.size / took,
            "peak_rss_mib": peak_rss_mib()}


# --- orchestration ---------------------------------------------------------------------------

def run_measure(name: str, *args: str) -> dict:
    """Run one measurement in a fresh interpreter and return its JSON result."""
    done = subprocess.run([sys.executable, __file__, "--measure", name, *args],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"measurement {name} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {name}: {result}", flush=True)
    return result


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import keras
    import tensorflow as tf

    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, TensorFlow {tf.__version__}, "
            f"Keras {keras.__version__} ({keras.backend.backend()} backend), CPU only")


def warm(*folders: Path) -> None:
    """Read every file once, so each measurement starts from the same (warm) page cache."""
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:  # in pieces: a 2 GB bytes object here would be every
                    while f.read(1 << 24):  # child's peak RSS too (ru_maxrss survives fork and exec)
                        pass


def main(sample: Path | None) -> None:
    root = copies_of(sample) if sample else dataset_root()
    cache = bench_dir() / "ingest"
    shutil.rmtree(cache, ignore_errors=True)
    print("measuring (each in its own process, the files in the page cache):", flush=True)
    warm(root)
    one_core = run_measure("decode", str(root))
    ours = run_measure("ours", str(root), str(cache))
    orig = run_measure("original", str(root))  # last: its 20 GB push the files out of the page cache
    warm(root, cache)  # the PNGs for the reload, the cache for the training epochs
    reload = run_measure("reload", str(root), str(cache))
    prepare = time_prepare(root, cache)
    cores = os.cpu_count() or 1
    limit = cores * one_core["rate"]
    t_float = run_measure("train-float", str(root), str(cache))
    t_ours = run_measure("train-ours", str(root), str(cache))
    t_full = run_measure("train-ours-full", str(root), str(cache))
    loader = run_measure("loader", str(root), str(cache))
    rows = [
        ("1. ingest throughput", f"{orig['rate']:,.0f} patches/s ({orig['seconds']:.0f} s)",
         f"{ours['rate']:,.0f} patches/s ({ours['seconds']:.0f} s)", f"{ours['rate'] / orig['rate']:.2f}x", ">= 3x"),
        ("2. ingest peak RSS", f"{orig['peak_rss_mib'] / 1024:.2f} GiB", f"{ours['peak_rss_mib'] / 1024:.2f} GiB",
         f"{orig['peak_rss_mib'] / ours['peak_rss_mib']:.1f}x less", ""),
        (f"   ingest against {cores} cores x one core's decode rate ({one_core['rate']:,.0f} patches/s: "
         "read + cv2.imdecode, one thread)", "", f"{ours['rate']:,.0f} of {limit:,.0f} patches/s",
         f"{ours['rate'] / limit:.2f}", ">= 0.8"),
        ("3. cached reload (index + open, in process)", "(none: decodes every run)", f"{reload['seconds']:.2f} s",
         "", ""),
        (f"   `python -m histo_exp.prepare` on a prepared set, whole process (median of {prepare['runs']})", "",
         f"{prepare['median']:.2f} s ({prepare['min']:.2f}-{prepare['max']:.2f})", "", "<= 2 s"),
        (f"4. training, {TRAIN_SUBSET:,} images, 1 epoch", f"{t_float['rate']:,.0f} images/s",
         f"{t_ours['rate']:,.0f} images/s", f"{t_ours['rate'] / t_float['rate']:.2f}", ">= 0.95"),
        ("   peak RSS of that epoch", f"{t_float['peak_rss_mib'] / 1024:.2f} GiB",
         f"{t_ours['peak_rss_mib'] / 1024:.2f} GiB", "", ""),
        (f"   full set ({t_full['images']:,} images), 1 epoch, ours", "",
         f"{t_full['rate']:,.0f} images/s, peak RSS {t_full['peak_rss_mib'] / 1024:.2f} GiB", "", "RSS < 1.5 GB"),
        ("5. batch loader, one thread, batch 64, shuffled", "",
         f"{loader['rate']:,.0f} images/s", "", ">= 138,000 (3x the 46k of the per-image augmenting loader)"),
    ]
    table = ["| measure | original method | histo_exp | ratio | target |", "|---|---|---|---|---|"]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(table)
    print("\n" + text)
    stamp = time.strftime("%Y-%m-%d")
    results = HERE / "results.md"
    # The sections after this table (## ...: make run by hand, make bench-gpu) are kept as they are.
    kept = results.read_text() if results.exists() else ""
    kept = kept[kept.index("\n## "):] if "\n## " in kept else ""
    results.write_text(
        f"# make bench results\n\nMeasured {stamp} on: {machine()}.\n\n"
        f"Data: {data_note(root, sample)}, read from a warm page cache by both pipelines. "
        "Each measurement ran in a fresh process; peak RSS is that process's `ru_maxrss`. "
        f"Training: the CNN with 2 conv blocks (32, 64 filters, 3x3, ReLU), batch 64, Adam; "
        "ours reads shuffled batches from the uint8 memory map (augmentation runs in the model's layers), "
        "the baseline fits "
        "a float32 array already in memory.\n\n" + text + "\n" + kept
    )
    print(f"\nwritten to {results}")


def data_note(root: Path, sample: Path | None) -> str:
    if sample:
        return (f"{TOTAL:,} real 50x50 IDC patches: the PNGs of `{sample}` again and again under new "
                f"patient ids ({root}, hard links)")
    return (f"{TOTAL:,} synthetic 50x50 RGB PNG patches from {PATIENTS} patients in the IDC layout "
            "(`bench/run.py` makes them once)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", nargs="+", metavar=("NAME", "ARG"))
    parser.add_argument("--from", dest="sample", type=Path, default=None,
                        help="make the full-size tree from copies of this IDC-layout folder's PNGs "
                             "(real patches) instead of synthetic ones")
    args = parser.parse_args()
    if not args.measure:
        main(args.sample.resolve() if args.sample else None)
    else:
        name, *rest = args.measure
        paths = [Path(p) for p in rest]
        fn = {"original": measure_original, "decode": measure_decode, "ours": measure_ours, "reload": measure_reload,
              "train-float": lambda r, c: measure_train(r, c, "float"),
              "train-ours": lambda r, c: measure_train(r, c, "ours"),
              "train-ours-full": lambda r, c: measure_train(r, c, "ours-full"), "loader": measure_loader}[name]
        print(json.dumps(fn(*paths)))
