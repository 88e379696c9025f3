"""The CNN and the KerasTuner HyperModel that searches over it."""
