"""Issue 21's benchmark for ``data=pcam``: ingest from PCam-shaped HDF5 at full size, one layout at a time.

    python bench/pcam.py --layout contiguous|gzip-chunked|h5gz [--rows N] [--write] [--keep] [--code DIR]

Writes PCam's nine files (262,144 / 32,768 / 32,768 rows of 96x96x3, or ``--rows`` in all, 8:1:1) under
``<bench dir>/pcam-<layout>`` on the cache's disk: the 5,245 real patches of idc-mini brought to 96 px
(``cv2.resize``) and cycled, written a block at a time. Layouts:
  contiguous    no chunks, no filter (as the published files after gunzip): the cache copies their rows
                as a file copy does. Reference: ``cp`` of the x files to the cache's disk.
  gzip-chunked  HDF5 chunks of (1024, 96, 96, 3), compression="gzip" (level 4, h5py's default). Reference:
                one process's h5py read-and-decompress rate of the x datasets, times the processes the
                ingest uses (one: a reading thread and the writing main thread).
  h5gz          the contiguous files gzipped whole (``gzip -1``), as published: the decompression alone
                (``gzip -dc > /dev/null``, and Python's ``gzip``, which the ingest streams through) timed apart.
Each measurement runs in a fresh process (peak RSS: that process's own ``ru_maxrss``, from ``wait4``),
each after ``sync`` and ``posix_fadvise(DONTNEED)`` on the files it reads (a cold page cache for them;
the other processes' pages are left alone), none writing behind ``fsync``. The ingest is
``histo_exp.data.cache.ingest`` of ``histo_exp.data.pcam.read``'s manifest, configured as
``python -m histo_exp.prepare data=pcam data.root=...`` configures it. Every file is deleted at the end
(``--keep`` keeps the source files). ``--write`` puts the table in bench/results.md's "PCam ingest" section.
``--code DIR`` measures the ``histo_exp`` package under DIR (e.g. ``git archive HEAD histo_exp conf``
unpacked there, with the commit in DIR/COMMIT) instead of the working tree's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
SAMPLE = PROJECT.parent / "shared" / "data" / "idc-mini"
FULL = {"train": 262_144, "valid": 32_768, "test": 32_768}
PREFIX = "camelyonpatch_level_2_split_"
SIZE = 96
ROW = SIZE * SIZE * 3  # bytes of one patch
BLOCK = 4096  # rows written at a time (113 MB)
H5_CHUNK = 1024  # rows per HDF5 chunk of the gzip-chunked layout
GZIP_LEVEL = 1  # of the h5gz layout's whole-file gzip (one core; -6 would take some 6 minutes for 9 GB)
RSS_LIMIT_MIB = 1.5 * 1024
TARGET = 0.8
SECTION = "## PCam ingest (issue 21)"
CODE: Path | None = None  # --code: the histo_exp package the children import (None: the working tree's)


def bench_dir() -> Path:
    return Path(os.environ.get("HISTO_EXP_BENCH", Path.home() / ".cache" / "histo_exp" / "bench"))


def rows_of(total: int | None) -> dict[str, int]:
    if not total:
        return dict(FULL)
    valid = total // 10
    return {"train": total - 2 * valid, "valid": valid, "test": valid}


def x_files(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.name.startswith(PREFIX) and "_x.h5" in p.name)


# --- children (--measure NAME ...): each prints one JSON line ----------------------------------

def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make(root: Path, layout: str, total: int) -> dict:
    """The nine files, a block at a time (the pool of 5,245 patches at 96 px is 145 MB)."""
    import cv2
    import h5py
    import numpy as np

    from histo_exp.data.index import index

    m = index(SAMPLE)
    pool = np.empty((len(m), SIZE, SIZE, 3), dtype=np.uint8)
    for i, rel in enumerate(m.paths):
        img = cv2.imread(str(m.root / rel), cv2.IMREAD_COLOR)
        pool[i] = cv2.cvtColor(cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    labels, xs, ys = m.labels.astype(np.uint8), np.asarray(m.x), np.asarray(m.y)
    root.mkdir(parents=True, exist_ok=True)
    chunked = layout == "gzip-chunked"
    start, written = 0, 0
    for part, n in rows_of(total).items():
        src = (start + np.arange(n)) % len(pool)  # where each row's patch comes from: the pool, cycled
        start += n
        with h5py.File(root / f"{PREFIX}{part}_x.h5", "w") as f:
            ds = f.create_dataset("x", shape=(n, SIZE, SIZE, 3), dtype=np.uint8,
                                  chunks=(min(H5_CHUNK, n), SIZE, SIZE, 3) if chunked else None,
                                  compression="gzip" if chunked else None)
            for lo in range(0, n, BLOCK):
                hi = min(lo + BLOCK, n)
                ds[lo:hi] = pool[src[lo:hi]]
        with h5py.File(root / f"{PREFIX}{part}_y.h5", "w") as f:
            f.create_dataset("y", data=labels[src].reshape(n, 1, 1, 1))
        with open(root / f"{PREFIX}{part}_meta.csv", "w") as out:
            out.write(",coord_y,coord_x,tumor_patch,center_tumor_patch,wsi\n")
            for i, s in enumerate(src.tolist()):  # a slide per 1,024 rows: no slide in two parts
                t = bool(labels[s])
                out.write(f"{i},{ys[s]},{xs[s]},{t},{t},camelyon16_{part}_{i // 1024:03d}\n")
        written += n
    return {"rows": written, "bytes": sum(p.stat().st_size for p in root.iterdir()), "peak_rss_mib": peak_rss_mib()}


def data_settings(root: Path, cache: Path):
    """``data`` as ``python -m histo_exp.prepare data=pcam data.root=<root> data.cache_dir=<cache>`` has it."""
    from hydra import compose, initialize_config_dir

    from histo_exp.config import CONFIG_DIR
    from histo_exp.settings import Data
    from histo_exp.settings.fields import build
    from histo_exp.space import to_plain

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["data=pcam", f"data.root={root}", f"data.cache_dir={cache}"])
    return build(Data, to_plain(cfg.data), "data")


def measure_ingest(root: Path, cache: Path) -> dict:
    from histo_exp.data import pcam
    from histo_exp.data.cache import ingest

    cfg = data_settings(root, cache)
    t = time.perf_counter()
    m = pcam.read(cfg, progress=False)
    read_s = time.perf_counter() - t
    cached = ingest(m, cfg.cache_dir, cfg.image_size, small_patches=cfg.small_patches, workers=cfg.workers,
                    progress=False)
    took = time.perf_counter() - t
    assert cached.built and bool(cached.usable.all())
    return {"rows": len(m), "bytes": int(cached.images.nbytes), "seconds": took, "read_s": read_s,
            "copied": getattr(m.pixels, "extents", None) is not None, "peak_rss_mib": peak_rss_mib()}


def measure_h5read(root: Path) -> dict:
    """One process's h5py read (and decompress) of every x dataset, in the ingest's chunks, discarded."""
    import h5py
    import numpy as np

    from histo_exp.data.pcam import CHUNK

    rows = 0
    t = time.perf_counter()
    for path in x_files(root):
        with h5py.File(path, "r") as f:
            ds = f["x"]
            buf = np.empty((CHUNK, *ds.shape[1:]), dtype=np.uint8)
            for lo in range(0, ds.shape[0], CHUNK):
                hi = min(lo + CHUNK, ds.shape[0])
                ds.read_direct(buf[: hi - lo], np.s_[lo:hi])
            rows += ds.shape[0]
    took = time.perf_counter() - t
    return {"rows": rows, "bytes": rows * ROW, "seconds": took, "peak_rss_mib": peak_rss_mib()}


def measure_pygunzip(root: Path) -> dict:
    """Python's gzip (what the ingest streams a .h5.gz through) inflating every x file, 16 MB at a time."""
    import gzip

    out = 0
    buf = bytearray(16 * 2**20)
    t = time.perf_counter()
    for path in x_files(root):
        with gzip.open(path, "rb") as f:
            while n := f.readinto(buf):
                out += n
    took = time.perf_counter() - t
    return {"bytes": out, "seconds": took, "peak_rss_mib": peak_rss_mib()}


# --- the orchestrating process (small: a child's ru_maxrss starts from what it forked from) ----------

def run(cmd: list[str], stdout=subprocess.DEVNULL) -> dict:
    """``cmd`` in a fresh process: its wall time, its own peak RSS (``wait4``) and, from a measurement
    child, its JSON."""
    t = time.perf_counter()
    env = dict(os.environ)
    if CODE is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(CODE), *filter(None, [env.get("PYTHONPATH")])])
    p = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, cwd=PROJECT, env=env)
    text = p.stdout.read().decode() if stdout == subprocess.PIPE else ""
    err = p.stderr.read().decode()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    if p.returncode:
        raise RuntimeError(f"{cmd} failed ({p.returncode}):\n{err[-3000:]}")
    got = json.loads(text.strip().splitlines()[-1]) if text.strip() else {}
    return {"wall": wall, **got, "peak_rss_mib": usage.ru_maxrss / 1024}


def child(name: str, *args: Path) -> dict:
    got = run([sys.executable, __file__, "--measure", name, *map(str, args)], stdout=subprocess.PIPE)
    print(f"  {name}: {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in got.items()})}",
          flush=True)
    return got


def cold(*paths: Path) -> None:
    """``sync``, then each file's pages out of the page cache (its own pages only: others' stay)."""
    os.sync()
    for top in paths:
        for path in ([top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def resident(paths: list[Path]) -> int:
    """Bytes of ``paths`` in the page cache (``fincore``), to check that ``cold`` did its work."""
    done = subprocess.run(["fincore", "-bno", "RES", *map(str, paths)], capture_output=True, text=True)
    return sum(int(v) for v in done.stdout.split()) if done.returncode == 0 else -1


def remove(*paths: Path) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    dev = subprocess.run(["findmnt", "-no", "SOURCE,FSTYPE", "--target", str(bench_dir())],
                         capture_output=True, text=True).stdout.split()
    disk = bench_dir()
    total = shutil.disk_usage(disk).total / 1e9
    import h5py

    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, disk {' '.join(dev)} ({total:.0f} GB, "
            f"virtual), Linux {platform.release()}, Python {platform.python_version()}, h5py {h5py.__version__} "
            f"(HDF5 {h5py.version.hdf5_version}), coreutils cp, gzip")


def code_label() -> str:
    """Which histo_exp the children ran: a clean copy of a commit (``--code``), or the working tree (with
    the uncommitted changes to the package named)."""
    if CODE is not None:
        commit = (CODE / "COMMIT").read_text().strip() if (CODE / "COMMIT").exists() else "?"
        return f"commit {commit}"
    git = ["git", "-C", str(PROJECT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "histo_exp"], capture_output=True,
                           text=True).stdout.split("\n")
    dirty = sorted(line[3:] for line in dirty if line.strip())
    if not dirty:
        return f"commit {head}"
    return f"working tree on {head}, uncommitted changes to {', '.join(dirty)}"


def mbs(row: dict) -> float:
    return row["bytes"] / row["seconds"] / 1e6


def measure(layout: str, total: int | None, keep: bool) -> tuple[list[tuple], dict]:
    base = bench_dir()
    base.mkdir(parents=True, exist_ok=True)
    root, cache, copy = base / f"pcam-{layout}", base / f"pcam-{layout}-cache", base / f"pcam-{layout}-copy"
    remove(cache, copy)
    rows = rows_of(total)
    n = sum(rows.values())
    print(f"{layout}: {n:,} rows under {root}; free on the disk: {shutil.disk_usage(base).free / 1e9:.1f} GB",
          flush=True)
    made = root / f".complete-{n}"
    notes: dict = {"rows": n, "root": str(root), "code": code_label()}
    print(f"  code: {notes['code']}", flush=True)
    if not made.exists():
        remove(root)
        gen = child("make", root, Path(layout if layout != "h5gz" else "contiguous"), Path(str(n)))
        notes["make_s"] = gen["wall"]
        if layout == "h5gz":
            files = [p for p in root.iterdir() if p.suffix == ".h5"]
            zipped = run(["gzip", f"-{GZIP_LEVEL}", *map(str, files)])
            notes["gzip_s"] = zipped["wall"]
            print(f"  gzip -{GZIP_LEVEL}: {zipped['wall']:.0f} s", flush=True)
        made.touch()
    xs = x_files(root)
    notes["x_bytes"] = sum(p.stat().st_size for p in xs)
    notes["all_bytes"] = sum(p.stat().st_size for p in root.iterdir() if p.is_file())
    print(f"  x files: {notes['x_bytes'] / 1e9:.2f} GB; all nine: {notes['all_bytes'] / 1e9:.2f} GB", flush=True)
    table: list[tuple] = []  # (measure, rows, bytes, seconds, MB/s, ratio, peak RSS MiB, target, met)
    data_bytes = n * ROW

    if layout == "contiguous":
        cold(root)
        notes["resident_before_cp"] = resident(xs)
        copy.mkdir(parents=True)
        cp = run(["cp", *map(str, xs), str(copy)])
        cp["bytes"], cp["seconds"] = notes["x_bytes"], cp["wall"]
        print(f"  cp: {cp['wall']:.1f} s, {mbs(cp):.0f} MB/s", flush=True)
        remove(copy)
        cold(root)
        notes["resident_before_ingest"] = resident(xs)
        ing = child("ingest", root, cache)
        ratio = mbs(ing) / mbs(cp)
        table.append(("`cp` of the 3 x files to the cache's disk (reference)", "", cp["bytes"], cp["seconds"],
                      mbs(cp), None, cp["peak_rss_mib"], "", ""))
        table.append(("ingest (`pcam.read` + `cache.ingest`; kernel copy of the rows)", n, ing["bytes"],
                      ing["seconds"], mbs(ing), ratio, ing["peak_rss_mib"], f">= {TARGET} x cp",
                      ratio >= TARGET))
    elif layout == "gzip-chunked":
        cold(root)
        one = child("h5read", root)
        cold(root)
        ing = child("ingest", root, cache)
        ratio = mbs(ing) / mbs(one)
        table.append(("h5py read + decompress of the x datasets, one process (reference x 1)", one["rows"],
                      one["bytes"], one["seconds"], mbs(one), None, one["peak_rss_mib"], "", ""))
        table.append(("ingest (`pcam.read` + `cache.ingest`; 1 process: a reading thread, the writing main "
                      "thread)", n, ing["bytes"], ing["seconds"], mbs(ing), ratio, ing["peak_rss_mib"],
                      f">= {TARGET} x 1 x h5py", ratio >= TARGET))
    else:
        cold(root)
        dc = run(["sh", "-c", 'for f in "$@"; do gzip -dc "$f"; done > /dev/null', "sh", *map(str, xs)])
        dc["bytes"], dc["seconds"] = data_bytes, dc["wall"]
        print(f"  gzip -dc: {dc['wall']:.1f} s", flush=True)
        cold(root)
        py = child("pygunzip", root)
        cold(root)
        ing = child("ingest", root, cache)
        table.append(("`gzip -dc > /dev/null` of the 3 x files (decompression alone)", "", dc["bytes"],
                      dc["seconds"], mbs(dc), None, dc["peak_rss_mib"], "", ""))
        table.append(("Python `gzip` inflating them, one process (the ingest's decompressor)", "", py["bytes"],
                      py["seconds"], mbs(py), None, py["peak_rss_mib"], "", ""))
        table.append(("ingest (`pcam.read` + `cache.ingest`, streamed from the .gz; ratio: to Python's gzip)", n,
                      ing["bytes"], ing["seconds"], mbs(ing), mbs(ing) / mbs(py), ing["peak_rss_mib"], "", ""))
    notes["ingest"] = ing
    table.append(("ingest peak RSS", "", "", "", "", None, ing["peak_rss_mib"], "<= 1.5 GiB",
                  ing["peak_rss_mib"] <= RSS_LIMIT_MIB))
    remove(cache)
    if not keep:
        remove(root)
    return table, notes


def render(table: list[tuple]) -> str:
    lines = ["| measure | rows | bytes | seconds | MB/s | ratio to the reference | peak RSS | target | met |",
             "|---|---|---|---|---|---|---|---|---|"]
    for what, rows, nbytes, secs, rate, ratio, rss, target, met in table:
        cells = [what, f"{rows:,}" if rows else "", f"{nbytes / 1e9:.2f} GB" if nbytes else "",
                 f"{secs:.1f}" if secs else "", f"{rate:,.0f}" if rate else "",
                 f"{ratio:.2f}" if ratio is not None else "", f"{rss / 1024:.2f} GiB",
                 target, "" if met == "" else ("yes" if met else "**no**")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe(layout: str, notes: dict) -> str:
    n, full = notes["rows"], sum(FULL.values())
    size = "full size" if n == full else f"{n / full:.1%} of full size"
    how = {"contiguous": "HDF5 contiguous datasets, no filter (as the published files after gunzip)",
           "gzip-chunked": f"HDF5 chunks of ({H5_CHUNK}, 96, 96, 3), gzip level 4 (h5py's default)",
           "h5gz": f"the contiguous files gzipped whole (`gzip -{GZIP_LEVEL}`), read as published (.h5.gz)"}[layout]
    made = f"written in {notes['make_s']:.0f} s" if "make_s" in notes else "written before"
    if "gzip_s" in notes:
        made += f", gzipped in {notes['gzip_s']:.0f} s"
    ing = notes["ingest"]
    text = (f"{n:,} rows ({size}): {how}; x files {notes['x_bytes'] / 1e9:.2f} GB, all nine "
            f"{notes['all_bytes'] / 1e9:.2f} GB ({made}). The ingest's seconds are in its process, from "
            f"`pcam.read` ({ing['read_s']:.1f} s of them: the meta CSVs, the labels, the headers) to the "
            f"cache complete (its whole process: {ing['wall']:.1f} s).")
    if "resident_before_cp" in notes:
        text += (f" Bytes of the x files in the page cache before the copy and before the ingest (`fincore`): "
                 f"{notes['resident_before_cp']:,} and {notes['resident_before_ingest']:,}.")
    return text


def write_results(layout: str, table: list[tuple], notes: dict) -> Path:
    results = HERE / "results.md"
    text = results.read_text() if results.exists() else ""
    head = (f"{SECTION}\n\nMeasured with `python bench/pcam.py --layout <layout> --write` on: {machine()}. "
            "PCam's nine files were made from the 5,245 real patches of idc-mini brought to 96 px "
            "(`cv2.resize`) and cycled, one layout at a time, on the cache's disk, and deleted afterwards. Each "
            "measurement ran in a fresh process after `sync` and `posix_fadvise(DONTNEED)` on the files it "
            "reads (those files cold in the page cache; no `fsync` of what is written: the copy and the "
            "ingest alike end with their writes in the page cache). Peak RSS: the process's own `ru_maxrss` "
            "(`wait4`). MB/s: 10^6 bytes of patches (or, for `cp`, of the x files) per second. Two other "
            "processes shared the 2 cores and the disk while these ran.\n")
    start = text.find(SECTION)
    if start < 0:
        section, before, after = head, text.rstrip("\n") + "\n\n", ""
    else:
        end = text.find("\n## ", start + len(SECTION))
        end = len(text) if end < 0 else end + 1
        before, section, after = text[:start], text[start:end], text[end:]
        sub = section.find("\n### ")
        section = head + (section[sub:] if sub >= 0 else "")
    stamp = time.strftime("%Y-%m-%d %H:%M")
    label = notes.get("code", "")
    title = f"{layout}, {label.split(',')[0]}" if label else layout
    block = (f"\n### {title}\n\nMeasured {stamp}, code: {label or 'the working tree'}. "
             f"{describe(layout, notes)}\n\n{render(table)}\n")
    pattern = re.compile(rf"\n### {re.escape(title)}\n.*?(?=\n### |\Z)", re.S)
    section = pattern.sub(lambda _: block, section) if pattern.search(section) else section.rstrip("\n") + "\n" + block
    order = ["contiguous", "gzip-chunked", "h5gz"]  # the subsections in this order
    parts = re.split(r"(?=\n### )", section)
    section = parts[0] + "".join(sorted(parts[1:], key=lambda p: (order.index(p.split("\n")[1][4:].split(",")[0]),
                                                                  p.split("\n")[1])))
    results.write_text(before + section.rstrip("\n") + "\n" + ("\n" + after if after else ""))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=("contiguous", "gzip-chunked", "h5gz"))
    parser.add_argument("--rows", type=int, default=None, help="rows in all (8:1:1); default PCam's 327,680")
    parser.add_argument("--write", action="store_true", help="put the table in bench/results.md")
    parser.add_argument("--keep", action="store_true", help="keep the source files (the cache is always deleted)")
    parser.add_argument("--code", type=Path, default=None,
                        help="import histo_exp from this folder (a clean copy of a commit) in the children")
    parser.add_argument("--measure", nargs="+", metavar=("NAME", "ARG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        name, *rest = args.measure
        if name == "make":
            got = make(Path(rest[0]), rest[1], int(rest[2]))
        else:
            got = {"ingest": measure_ingest, "h5read": measure_h5read, "pygunzip": measure_pygunzip}[name](
                *map(Path, rest))
        print(json.dumps(got))
        return
    if not args.layout:
        parser.error("--layout is required")
    global CODE
    CODE = args.code.resolve() if args.code else None
    table, notes = measure(args.layout, args.rows, args.keep)
    print("\n" + render(table))
    tag = "head" if CODE is not None else "tree"
    (bench_dir() / f"pcam-{args.layout}-{notes['rows']}-{tag}.json").write_text(json.dumps(
        {"table": table, "notes": notes}, indent=1, default=str))
    if args.write:
        print(f"\nwritten to {write_results(args.layout, table, notes)}")


if __name__ == "__main__":
    main()
