"""One search shared by several processes, and one search carried across restarts.

KerasTuner runs a distributed search as a *chief* (the oracle, over gRPC) and *workers* (which
train trials), told apart by its environment protocol: ``KERASTUNER_TUNER_ID``,
``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT``. ``tuner.distributed`` sets those.

The MLflow search run's id is kept in the tuner folder (``histo_exp_run.json``), so workers log
their trials under the chief's search run, and a search resumed from its folder goes on in the
run it started in.

``python -m histo_exp.distributed --workers 2 [overrides]`` starts a chief and N workers on
loopback sharing one tuner folder (``make search-distributed WORKERS=2``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

ROLES = ("chief", "worker")
RUN_FILE = "histo_exp_run.json"


def role(cfg: Mapping[str, Any] | None) -> str | None:
    """``chief``, ``worker`` or None (one process); from the config, else from KerasTuner's env."""
    chosen = (cfg or {}).get("role")
    if chosen in (None, "none", ""):
        tuner_id = os.environ.get("KERASTUNER_TUNER_ID")
        if tuner_id and "KERASTUNER_ORACLE_IP" in os.environ:
            return "chief" if "chief" in tuner_id else "worker"
        return None
    if chosen not in ROLES:
        raise ValueError(f"tuner.distributed.role must be chief, worker or null; got {chosen!r}")
    return str(chosen)


def tuner_env(cfg: Mapping[str, Any]) -> dict[str, str]:
    """KerasTuner's environment for this process's role (empty when the config names none)."""
    chosen = cfg.get("role")
    if chosen in (None, "none", ""):
        return {}
    tuner_id = "chief" if role(cfg) == "chief" else f"worker{cfg.get('worker_id', 0)}"
    return {"KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": str(cfg["host"]),
            "KERASTUNER_ORACLE_PORT": str(cfg["port"])}


def record_search_run(folder: Path, run_id: str, tracking_uri: str) -> None:
    """Write the search run's id into the tuner folder (atomically: workers poll for it)."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{RUN_FILE}.{os.getpid()}"
    partial.write_text(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri}))
    partial.replace(folder / RUN_FILE)


def recorded_search_run(folder: Path, tracking_uri: str) -> str | None:
    """The search run recorded in ``folder`` for this tracking store, if any."""
    try:
        record = json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record.get("run_id") if record.get("tracking_uri") == tracking_uri else None


def wait_for_search_run(folder: Path, tracking_uri: str, is_running: Callable[[str], bool],
                        timeout_s: float, poll_s: float = 0.5) -> str:
    """Block until the chief has recorded a running search run in ``folder``; return its id."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run_id = recorded_search_run(folder, tracking_uri)
        if run_id and is_running(run_id):
            return run_id
        time.sleep(poll_s)
    raise TimeoutError(
        f"no running search from a chief in {folder} after {timeout_s:.0f} s: start the chief "
        "(tuner.distributed.role=chief) with the same tuner.directory and logger.tracking_uri, "
        "or raise tuner.distributed.timeout_s"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (for the chief's oracle)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def commands(workers: int, folder: Path, port: int, overrides: Sequence[str],
             host: str = "127.0.0.1") -> dict[str, list[str]]:
    """The ``python -m histo_exp`` command line of the chief and of each worker."""
    shared = [*overrides, f"tuner.directory={folder}", f"tuner.distributed.host={host}",
              f"tuner.distributed.port={port}"]
    out = {"chief": [sys.executable, "-m", "histo_exp", *shared, "tuner.distributed.role=chief",
                     f"hydra.run.dir={folder}/chief"]}
    for i in range(1, workers + 1):
        out[f"worker{i}"] = [sys.executable, "-m", "histo_exp", *shared, "tuner.distributed.role=worker",
                             f"tuner.distributed.worker_id={i}", f"hydra.run.dir={folder}/worker{i}"]
    return out


def device_env(index: int, gpus: Sequence[str]) -> dict[str, str]:
    """Pin worker ``index`` (1, 2, ...) to one of ``gpus``, round robin; the chief (0) gets none.

    The chief only serves the oracle and finally evaluates one model: on a GPU it would take
    memory (TensorFlow and JAX reserve most of a GPU up front) that a worker needs.
    """
    if not gpus:
        return {}
    return {"CUDA_VISIBLE_DEVICES": str(gpus[(index - 1) % len(gpus)]) if index else ""}


def _relay(name: str, stream: Any) -> None:
    for line in stream:
        sys.stdout.write(f"[{name}] {line}")
    sys.stdout.flush()


def stop(procs: Sequence[subprocess.Popen], grace_s: float = 60.0) -> None:
    """Ctrl-C each process still running (runs end KILLED), then kill what outlives ``grace_s``."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_all(procs: Mapping[str, subprocess.Popen], poll_s: float = 0.5) -> dict[str, int]:
    """Exit codes of all processes; once one fails the others are stopped (a chief would wait for
    trials that will never come, and workers for a chief that is gone)."""
    while True:
        codes = {name: proc.poll() for name, proc in procs.items()}
        if any(codes.values()):
            stop(list(procs.values()))
            return {name: proc.wait() for name, proc in procs.items()}
        if all(code is not None for code in codes.values()):
            return codes
        time.sleep(poll_s)


def launch(workers: int, folder: Path, overrides: Sequence[str], port: int | None = None,
           gpus: Sequence[str] = ()) -> int:
    """Run a chief and ``workers`` workers to the end; their output is prefixed by role."""
    port = port or free_port()
    procs: dict[str, subprocess.Popen] = {}
    relays = []
    print(f"search in {folder}: chief on 127.0.0.1:{port}, {workers} workers", flush=True)
    try:
        for index, (name, cmd) in enumerate(commands(workers, folder, port, overrides).items()):
            procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True, bufsize=1, env={**os.environ, **device_env(index, gpus)})
            relays.append(threading.Thread(target=_relay, args=(name, procs[name].stdout), daemon=True))
            relays[-1].start()
        codes = wait_all(procs)
    except KeyboardInterrupt:
        stop(list(procs.values()))
        print(f"interrupted: resume with --dir {folder}", flush=True)
        return 130
    finally:
        for relay in relays:
            relay.join(timeout=5)
    failed = {name: code for name, code in codes.items() if code}
    if failed:
        print(f"failed: {failed}; each process's log is in {folder}/<name>/", flush=True)
        return 1
    print(f"done: the search and its evaluation are in {folder}/chief", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m histo_exp.distributed",
        description="A KerasTuner chief and N workers on this machine, sharing one search.")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--dir", type=Path, help="shared tuner folder; an existing one is resumed "
                        "(default: outputs/distributed/<date>_<time>)")
    parser.add_argument("--port", type=int, help="the chief's oracle port (default: a free one)")
    parser.add_argument("--gpus", default="", help="GPU ids for the workers, one each, round robin "
                        "(e.g. 0,1,2,3; sets CUDA_VISIBLE_DEVICES; the chief gets none)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m histo_exp")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be 1 or more")
    folder = (args.dir or Path("outputs/distributed") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    gpus = [g for g in args.gpus.split(",") if g.strip()]
    return launch(args.workers, folder.absolute(), args.overrides, args.port, gpus)


if __name__ == "__main__":
    raise SystemExit(main())
