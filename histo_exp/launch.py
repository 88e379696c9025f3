"""``python -m histo_exp.launch --workers 2 [overrides]``: a KerasTuner chief and N workers on
this machine, sharing one tuner folder (``make search-distributed WORKERS=2``).

Each process is a plain ``python -m histo_exp`` with ``tuner.distributed.*`` set; this module only
starts them, relays their output and stops them together.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from histo_exp.signals import exit_code, handle_stops


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (for the chief's oracle)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def commands(workers: int, folder: Path, port: int, overrides: Sequence[str],
             host: str = "127.0.0.1", session: str = "") -> dict[str, list[str]]:
    """The ``python -m histo_exp`` command line of the chief and of each worker."""
    shared = [*overrides, f"tuner.directory={folder}", f"tuner.distributed.host={host}",
              f"tuner.distributed.port={port}"]
    if session:
        shared.append(f"tuner.distributed.session={session}")
    base = [sys.executable, "-m", "histo_exp", *shared]
    out = {"chief": [*base, "tuner.distributed.role=chief", f"hydra.run.dir={folder}/chief"]}
    for i in range(1, workers + 1):
        out[f"worker{i}"] = [*base, "tuner.distributed.role=worker", f"tuner.distributed.worker_id={i}",
                             f"hydra.run.dir={folder}/worker{i}"]
    return out


def device_env(index: int, gpus: Sequence[str]) -> dict[str, str]:
    """Pin worker ``index`` (1, 2, ...) to one of ``gpus``, round robin; the chief (0) gets none.

    The chief only serves the oracle and finally evaluates one model: on a GPU it would take
    memory (TensorFlow and JAX reserve most of a GPU up front) that a worker needs.
    """
    if not gpus:
        return {}
    # Workers may share a GPU (more workers than GPUs): take memory as needed, not all up front.
    return {"CUDA_VISIBLE_DEVICES": str(gpus[(index - 1) % len(gpus)]) if index else "",
            "TF_FORCE_GPU_ALLOW_GROWTH": "true", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


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
            print(f"pid {proc.pid} did not stop within {grace_s:.0f} s of Ctrl-C: killed (its open runs stay "
                  "RUNNING until the search is resumed)", flush=True)
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
    """Run a chief and ``workers`` workers to the end; their output is prefixed by role.

    The processes run in their own session, so a Ctrl-C reaches them once, from here; whatever
    way this ends, none is left running.
    """
    port = port or free_port()
    session = uuid.uuid4().hex[:12]
    procs: dict[str, subprocess.Popen] = {}
    relays = []
    print(f"search in {folder}: chief on 127.0.0.1:{port}, {workers} workers", flush=True)
    try:
        for index, (name, cmd) in enumerate(commands(workers, folder, port, overrides, session=session).items()):
            procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                           bufsize=1, start_new_session=True,
                                           env={**os.environ, "PYTHONUNBUFFERED": "1", **device_env(index, gpus)})
            relays.append(threading.Thread(target=_relay, args=(name, procs[name].stdout), daemon=True))
            relays[-1].start()
        codes = wait_all(procs)
    except KeyboardInterrupt as interrupt:
        stop(list(procs.values()))
        print(f"interrupted: resume with --dir {folder}", flush=True)
        return exit_code(interrupt)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
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
        prog="python -m histo_exp.launch",
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
    handle_stops()  # a scheduler's SIGTERM: the same clean end as Ctrl-C
    return launch(args.workers, folder.absolute(), args.overrides, args.port, gpus)


if __name__ == "__main__":
    raise SystemExit(main())
