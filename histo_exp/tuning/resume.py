"""A resume that goes on with the search it finds, or says why not, before any data is read.

KerasTuner reloads a search's oracle with the space it was begun with and draws new trials from it,
while the models would be built from today's config: a trial recorded as ``kernel_size=5`` held 3x3
kernels. So the space a search begins with is saved in its folder, and a resume compares.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from histo_exp.errors import PathNotFound, UsageError
from histo_exp.settings import Settings, load
from histo_exp.settings.fields import build
from histo_exp.settings.schema import Augment
from histo_exp.space import is_spec
from histo_exp.tuning.search_folder import SearchFolder

log = logging.getLogger(__name__)


def search_space(settings: Settings) -> dict[str, Any]:
    """What a trial's model is built from besides its hyperparameter values, as plain JSON values."""
    data = settings.data
    space = {"model": settings.model, "optimizer": settings.optimizer,
             "data": {"augment": vars(data.augment), "color": data.color, "normalize": data.normalize,
                      "image_size": data.image_size}}
    return json.loads(json.dumps(space))


def leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"filters": {choice: [...]}}}`` -> ``{"model.filters": {choice: [...]}}``: a spec is one value."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and not is_spec(value):
            out |= leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def space_changes(saved: Mapping[str, Any], today: Mapping[str, Any]) -> list[str]:
    """``key: saved -> today`` for each setting of the space that differs."""
    before, now = leaves(saved), leaves(today)
    return [f"{key}: {before.get(key, '(unset)')} -> {now.get(key, '(unset)')}"
            for key in sorted(before.keys() | now.keys()) if before.get(key) != now.get(key)]


def with_space(settings: Settings, space: Mapping[str, Any]) -> Settings:
    """``settings`` with the model, optimizer and augmentation of ``space`` (a saved one)."""
    data = space["data"]
    return dataclasses.replace(
        settings, model=dict(space["model"]), optimizer=dict(space["optimizer"]),
        data=dataclasses.replace(settings.data, augment=build(Augment, data["augment"], "data.augment"),
                                 color=data["color"], normalize=data["normalize"], image_size=data["image_size"]))


def resumed(settings: Settings, folder: SearchFolder) -> Settings:
    """The settings to search with: today's, or the saved space's (``tuner.resume_space=saved``).

    Refused in one line: a ``tuner.directory`` set apart from the run's own folder that holds no
    search (a mistyped path would silently begin a new one), and a resume with another space.
    """
    tuner = settings.tuner
    if folder.role == "worker" or tuner.overwrite:
        return settings
    if not folder.holds_search():
        if folder.role == "lone" and Path(tuner.directory).absolute() != Path(settings.paths.output_dir).absolute():
            raise PathNotFound(
                f"tuner.directory={tuner.directory} holds no search to resume (no {tuner.project_name}/oracle.json "
                "in it): check the path (a stopped run prints the command that resumes it), or add "
                "tuner.overwrite=true to begin a new search there")
        return settings
    saved, today = folder.saved_space(), search_space(settings)
    if saved is None:
        log.warning("%s was begun before histo_exp recorded search spaces: resuming with today's space unchecked",
                    folder.path)
        return settings
    changes = space_changes(saved, today)
    if not changes:
        return settings
    if tuner.resume_space == "saved":
        log.warning("tuner.resume_space=saved: resuming with the space the search began with; today's "
                    "changes are not used: %s", "; ".join(changes))
        return with_space(settings, saved)
    raise UsageError(
        f"the search in {folder.path} was begun with another search space ({'; '.join(changes)}): resuming "
        "would record trials under values their models were not built with. Search the new space with "
        "tuner.overwrite=true (starts over there) or a new tuner.directory; or resume as it began with "
        "tuner.resume_space=saved")


def checked(cfg: Any) -> Settings:
    """The composed config checked (``settings.load``) and resolved against the search it resumes, if any."""
    settings = load(cfg)
    return resumed(settings, SearchFolder.of(settings.tuner))


def resume_command(overrides: Sequence[str], directory: Path) -> str:
    """The command line that resumes a stopped search: its overrides, with ``tuner.directory`` set."""
    kept = [o for o in overrides if not o.lstrip("+~").startswith(("tuner.directory=", "tuner.overwrite="))]
    return shlex.join(["python", "-m", "histo_exp", *kept, f"tuner.directory={directory.absolute()}"])
