"""Experiment tracking: one MLflow run per search, one nested run per KerasTuner trial.

The only package that talks to MLflow:

- ``base``: the ``Tracker`` interface, which records nothing, ``NullTracker`` (``logger=none``) and
  the names of what is recorded; no MLflow.
- ``mlflow_tracker``: ``MlflowTracker``, the run model (search, trials, epochs, artifacts, model),
  through ``MlflowClient`` with explicit run ids, so no global active run is ever left behind.
- ``connection``: opening a store (``check_server``, HTTP settings, the lock on a new SQLite store).
- ``writes``: every write as a JSON-able record, and ``apply`` that carries one out.
- ``offline``: ``OfflineWriter``, which keeps the writes a store cannot take in a ``spool`` and sends
  them once it is back, and ``sync`` (``python -m histo_exp.sync``); ``spool_files`` keeps the files
  they name so the spool travels with its folder, ``spool_recovery`` mends what a writer that ended
  left (a torn last line, runs left open).
- ``system_metrics``: the per-run CPU, memory and GPU monitors.
- ``models``: the servable pyfunc model (``pyfunc``) and the registry's ``champion``.
- ``store``: reading a store back (``reader``, ``download_model``, ``trial_runs``).
- ``provenance``: the version, Keras and git commit tags of a run.
"""

from histo_exp.tracking.base import (
                                     CHAMPION,
                                     ERROR,
                                     FINAL_MODEL,
                                     MODEL_NAME,
                                     NullTracker,
                                     Tracker,
                                     ending_runs,
                                     flatten,
)
from histo_exp.tracking.connection import check_server
from histo_exp.tracking.mlflow_tracker import MlflowTracker
from histo_exp.tracking.offline import sync
from histo_exp.tracking.provenance import provenance
from histo_exp.tracking.store import download_model, reader, trial_runs

__all__ = ["CHAMPION", "ERROR", "FINAL_MODEL", "MODEL_NAME", "MlflowTracker", "NullTracker", "Tracker", "check_server",
           "download_model", "ending_runs", "flatten", "provenance", "reader", "sync", "trial_runs"]
