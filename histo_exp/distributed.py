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
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

ROLES = ("chief", "worker")
UNSET = (None, "none", "")  # tuner.distributed.role for a process that searches alone
RUN_FILE = "histo_exp_run.json"


def role(cfg: Mapping[str, Any] | None) -> str | None:
    """``chief``, ``worker`` or None (one process); from the config, else from KerasTuner's env."""
    chosen = (cfg or {}).get("role")
    if chosen in UNSET:
        tuner_id = os.environ.get("KERASTUNER_TUNER_ID")
        if tuner_id and "KERASTUNER_ORACLE_IP" in os.environ:
            return "chief" if "chief" in tuner_id else "worker"
        return None
    if chosen not in ROLES:
        raise ValueError(f"tuner.distributed.role must be chief, worker or null; got {chosen!r}")
    return str(chosen)


def tuner_env(cfg: Mapping[str, Any]) -> dict[str, str]:
    """KerasTuner's environment for this process's role (empty when the config names none).

    Workers without a ``worker_id`` get one from host and pid; a fixed id lets a restarted worker
    take back the trial it was running.
    """
    if cfg.get("role") in UNSET:
        return {}
    if role(cfg) == "chief":
        tuner_id = "chief"
    else:
        worker_id = cfg.get("worker_id")
        tuner_id = f"worker{worker_id}" if worker_id is not None else f"worker-{socket.gethostname()}-{os.getpid()}"
    return {"KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": str(cfg["host"]),
            "KERASTUNER_ORACLE_PORT": str(cfg["port"])}


@contextlib.contextmanager
def kerastuner_env(cfg: Mapping[str, Any] | None) -> Iterator[dict[str, str]]:
    """KerasTuner's variables set for the block and restored after it (a multirun of several
    jobs in one process must not inherit the last job's role)."""
    env = tuner_env(cfg or {})
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def search_lock(folder: Path) -> Iterator[None]:
    """Hold the tuner folder for this process: two chiefs (or a chief and a lone run) on one
    folder would each serve an oracle and write the same trials."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Beside the folder, not in it: tuner.overwrite=true deletes the folder while this is held.
    with open(folder.with_name(f".{folder.name}.lock"), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another process is running the search in {folder}; wait for it to end or stop it "
                "(workers join a search with tuner.distributed.role=worker)") from None
        yield


def record_search_run(folder: Path, run_id: str, tracking_uri: str, session: str | None = None) -> None:
    """Write the search run's id into the tuner folder (atomically: workers poll for it)."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{RUN_FILE}.{os.getpid()}"
    partial.write_text(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri, "session": session}))
    partial.replace(folder / RUN_FILE)


def recorded_search_run(folder: Path, tracking_uri: str, session: str | None = None) -> str | None:
    """The search run recorded in ``folder`` for this tracking store (and launch session), if any."""
    try:
        record = json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if record.get("tracking_uri") != tracking_uri or (session and record.get("session") != session):
        return None
    return record.get("run_id")


def wait_for_search_run(folder: Path, tracking_uri: str, is_running: Callable[[str], bool],
                        timeout_s: float, session: str | None = None, poll_s: float = 0.5) -> str:
    """Block until the chief has recorded a running search run in ``folder``; return its id.

    With a ``session`` (the launcher gives every process one), a record left by an earlier
    chief is not taken for this one's.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run_id = recorded_search_run(folder, tracking_uri, session)
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
    except KeyboardInterrupt:
        stop(list(procs.values()))
        print(f"interrupted: resume with --dir {folder}", flush=True)
        return 130
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


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


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
    signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's stop: the same clean end as Ctrl-C
    # Started in the background, a shell leaves SIGINT ignored, and so would the children be.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return launch(args.workers, folder.absolute(), args.overrides, args.port, gpus)


if __name__ == "__main__":
    raise SystemExit(main())
