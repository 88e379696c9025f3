"""Where the Hydra configs live, whichever folder the package runs from."""

from pathlib import Path

# histo_exp/conf links to the repo's conf/ in a checkout and is a real folder in a wheel.
CONFIG_DIR = Path(__file__).resolve().parent / "conf"
