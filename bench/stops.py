"""``python bench/stops.py``: is a stop ever lost? Issue 20's reproduction, run many times.

Starts a command, waits for the line that says it is at work (``trial 1 of`` for a search), waits a
random 0 to ``--window`` seconds, sends the signal and times the exit. A run passes when the process
exits with 128 + the signal's number within ``--limit`` seconds and, for a search, no MLflow run of
its store is left RUNNING. Prints one row per run and a summary; exits 1 if any run failed.

    python bench/stops.py --runs 20 --signal TERM
    python bench/stops.py --runs 10 --signal INT --command prepare --ready "decoding"
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {
    "search": (["-m", "histo_exp", "debug=fast", "tuner.max_trials=3"], "trial 1 of"),
    "prepare": (["-m", "histo_exp.prepare"], "decod"),
    "predict": (["-m", "histo_exp.predict"], "predict"),
    "sync": (["-m", "histo_exp.sync"], "send"),
}


def running_runs(store: Path) -> int | None:
    """MLflow runs left RUNNING in the SQLite store of ``store`` (None: no store there)."""
    db = store / "mlruns" / "mlflow.db"
    if not db.exists():
        return None
    import sqlite3

    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]


def one_run(args: list[str], ready: str, signum: int, delay: float, limit: float, cwd: Path,
            env: dict[str, str]) -> dict:
    """Start, wait for ``ready``, wait ``delay``, signal, time the exit."""
    log = cwd / "log.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
    deadline = time.monotonic() + 300
    while ready not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    if proc.poll() is not None:  # it ended before the signal: this run says nothing about stops
        return {"delay": delay, "code": proc.returncode, "seconds": 0.0, "running": running_runs(cwd), "late": True}
    sent = time.monotonic()
    proc.send_signal(signum)
    try:
        code = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        code = None
        proc.kill()
        proc.wait()
    return {"delay": delay, "code": code, "seconds": time.monotonic() - sent, "running": running_runs(cwd),
            "late": False}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--signal", default="TERM", choices=["TERM", "INT"])
    parser.add_argument("--command", default="search", choices=sorted(COMMANDS))
    parser.add_argument("--ready", help="the output line to wait for (default: the command's own)")
    parser.add_argument("--window", type=float, default=1.0, help="signal 0 to this many seconds after it")
    parser.add_argument("--limit", type=float, default=10.0, help="seconds the process may take to exit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh-cache", action="store_true", help="a new data cache for each run (prepare)")
    parser.add_argument("overrides", nargs="*", help="added to the command line")
    opts = parser.parse_args()
    signum = getattr(signal, f"SIG{opts.signal}")
    base, ready = COMMANDS[opts.command]
    rng = random.Random(opts.seed)
    failed = late = 0
    print(f"{opts.command}: SIG{opts.signal} 0-{opts.window} s after {opts.ready or ready!r}, {opts.runs} runs")
    for i in range(opts.runs):
        with tempfile.TemporaryDirectory() as tmp:
            env = {"HISTO_EXP_CACHE": str(Path(tmp) / "cache")} if opts.fresh_cache else {}
            row = one_run([*base, *opts.overrides], opts.ready or ready, signum, rng.uniform(0, opts.window),
                          opts.limit, Path(tmp), env)
            ok = row["code"] == 128 + signum and not row["running"]
            late += row["late"]
            failed += not ok and not row["late"]
            verdict = "ended before the signal" if row["late"] else "ok" if ok else "FAILED"
            print(f"{i + 1:3d}  after {row['delay']:.2f} s  exit {row['code']}  in {row['seconds']:.1f} s  "
                  f"runs left RUNNING: {row['running']}  {verdict}", flush=True)
            if verdict == "FAILED":
                print((Path(tmp) / "log.txt").read_text()[-3000:])
    print(f"{opts.runs - failed - late} of {opts.runs - late} signalled runs stopped cleanly"
          + (f" ({late} ended before the signal)" if late else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
