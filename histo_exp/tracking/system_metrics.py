"""CPU, memory, disk, network (and GPU, where NVML finds one) of each open run, as ``system/*`` metrics."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# MLflow's monitor logs its start and stop at INFO: once per trial, that is noise.
MONITOR_LOG = logging.getLogger("mlflow.system_metrics")
MONITOR_LOG.setLevel(logging.WARNING)


class SystemMetrics:
    """One MLflow ``SystemMetricsMonitor`` per watched run; none at all when ``enabled`` is false
    or once a monitor could not be made."""

    def __init__(self, tracking_uri: str, enabled: bool = True, interval_s: float = 10.0):
        self.tracking_uri = tracking_uri
        self.enabled = enabled
        self.interval_s = float(interval_s)
        self._monitors: dict[str, Any] = {}  # run id -> its SystemMetricsMonitor

    def watch(self, run_id: str, resume: bool = False) -> None:
        """Start sampling ``run_id`` (``resume``: its steps go on from those already logged)."""
        if not self.enabled:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(run_id, sampling_interval=self.interval_s,
                                           resume_logging=resume, tracking_uri=self.tracking_uri)
        except Exception as err:  # psutil missing, say
            log.warning("no system metrics for run %s (%s); logger.system_metrics=false turns them off",
                        run_id, err)
            self.enabled = False
            return
        monitor.start()
        self._monitors[run_id] = monitor

    def unwatch(self, run_id: str) -> None:
        monitor = self._monitors.pop(run_id, None)
        if monitor is not None:
            monitor.finish()

    def store_lost(self) -> None:
        """Stop every monitor, and silence the ones stopping: each sample they could not send is an error."""
        MONITOR_LOG.setLevel(logging.CRITICAL)
        for run_id in list(self._monitors):
            self.unwatch(run_id)

    def store_back(self) -> None:
        MONITOR_LOG.setLevel(logging.WARNING)
