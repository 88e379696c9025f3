"""KerasTuner's distributed protocol: a *chief* serves the oracle over gRPC, *workers* train trials.

The roles are told apart by KerasTuner's environment (``KERASTUNER_TUNER_ID``,
``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT``); ``tuner.distributed`` sets it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Mapping
from typing import Any
from unittest import mock

ROLES = ("chief", "worker")
UNSET = (None, "none", "")  # tuner.distributed.role for a process that searches alone


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
    with mock.patch.dict(os.environ, env):
        yield env
