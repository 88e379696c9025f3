"""What a search run and a kept model record about the code that made them."""

from __future__ import annotations

import functools
from pathlib import Path

from histo_exp import __version__, stack

PACKAGE = Path(__file__).parents[1]  # histo_exp/


@functools.cache
def provenance() -> dict[str, str]:
    """Package version, git commit of the source checkout (if any), Keras backend, and the versions of Python
    and the main packages (``histo_exp.stack.<distribution>``)."""
    import keras
    from mlflow.utils.git_utils import get_git_commit

    tags = {"histo_exp.version": __version__, "histo_exp.keras_backend": keras.backend.backend(),
            "histo_exp.keras_version": keras.__version__,
            **{f"histo_exp.stack.{name}": v for name, v in stack.versions(keras.backend.backend()).items()}}
    commit = get_git_commit(str(PACKAGE))
    if commit:
        tags["histo_exp.git_commit"] = commit
    return tags
