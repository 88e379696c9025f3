"""Experiment tracking: one MLflow run per search, one nested run per KerasTuner trial.

The only package that talks to MLflow. ``Tracker`` (``base``) is the interface and records
nothing; ``NullTracker`` is ``logger=none``; ``MlflowTracker`` (``mlflow_tracker``) logs through
``MlflowClient`` with explicit run ids, so no global active run is ever left behind; ``models``
logs the servable model and keeps the registry's ``champion``; ``store`` reads a store back.
"""

from histo_exp.tracking.base import (CHAMPION, ERROR, KEPT, MODEL_NAME, NullTracker, Tracker, ending_runs,
                                     flatten)
from histo_exp.tracking.mlflow_tracker import MlflowTracker, check_server
from histo_exp.tracking.store import download_model, reader, trial_runs

__all__ = ["CHAMPION", "ERROR", "KEPT", "MODEL_NAME", "MlflowTracker", "NullTracker", "Tracker", "check_server",
           "download_model", "ending_runs", "flatten", "reader", "trial_runs"]
