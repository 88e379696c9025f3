"""The KerasTuner search: tracked tuners, KerasTuner's distributed roles, and the tuner folder."""
