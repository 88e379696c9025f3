"""Evaluation of the best model: metrics at a chosen threshold, confidence intervals, plots, maps."""
