"""A resume goes on only with the space its search began with; a tuner folder that holds no search is said so."""

from __future__ import annotations

import pytest

from histo_exp.errors import PathNotFound, UsageError
from histo_exp.settings import load
from histo_exp.tuning.resume import resume_command, resumed, search_space
from histo_exp.tuning.search_folder import SearchFolder


def begun(settings) -> SearchFolder:
    """A search folder as a search begun with ``settings`` leaves it (its oracle and its space)."""
    folder = SearchFolder.of(settings.tuner)
    folder.path.mkdir(parents=True)
    (folder.path / "oracle.json").write_text("{}")
    folder.save_space(search_space(settings))
    return folder


def test_a_resume_with_the_same_space_goes_on(compose_cfg):
    settings = load(compose_cfg())
    begun(settings)
    assert resumed(settings, SearchFolder.of(settings.tuner)) == settings


def test_a_resume_with_another_space_is_refused_naming_the_change_and_the_ways_on(compose_cfg, tmp_path):
    first = load(compose_cfg(f"tuner.directory={tmp_path}/s"))
    begun(first)
    today = load(compose_cfg(f"tuner.directory={tmp_path}/s", "model.kernel_size=3",
                             "model.filters={choice: [4, 32]}"))
    with pytest.raises(UsageError) as refused:
        resumed(today, SearchFolder.of(today.tuner))
    said = str(refused.value)
    assert "model.kernel_size: {'choice': [5, 3]} -> 3" in said
    assert "model.filters: {'choice': [16, 32, 64]} -> {'choice': [4, 32]}" in said
    assert "tuner.overwrite=true" in said and "tuner.resume_space=saved" in said and "\n" not in said


def test_resume_space_saved_builds_trials_from_the_space_the_search_began_with(compose_cfg, tmp_path):
    first = load(compose_cfg(f"tuner.directory={tmp_path}/s", "data.augment.flip={choice: [true, false]}"))
    begun(first)
    today = load(compose_cfg(f"tuner.directory={tmp_path}/s", "model.kernel_size=3", "tuner.resume_space=saved",
                             "data.augment.flip=false"))
    used = resumed(today, SearchFolder.of(today.tuner))
    assert used.model == first.model and used.optimizer == first.optimizer
    assert used.data.augment == first.data.augment and search_space(used) == search_space(first)
    assert used.tuner == today.tuner  # only the space is the saved one


def test_a_tuner_directory_that_holds_no_search_is_an_error_that_says_how_to_begin_one(compose_cfg, tmp_path):
    typo = load(compose_cfg(f"tuner.directory={tmp_path}/seach"))
    with pytest.raises(PathNotFound, match=r"holds no search to resume .* tuner\.overwrite=true to begin"):
        resumed(typo, SearchFolder.of(typo.tuner))
    new = load(compose_cfg(f"tuner.directory={tmp_path}/seach", "tuner.overwrite=true"))
    assert resumed(new, SearchFolder.of(new.tuner)) == new
    default = load(compose_cfg())  # the run's own folder: a new search, as always
    assert resumed(default, SearchFolder.of(default.tuner)) == default


def test_the_resume_command_keeps_the_overrides_and_names_the_tuner_folder(tmp_path):
    said = resume_command(["optimizer=rmsprop", "tuner.overwrite=true", "model.filters={choice: [4, 8]}"],
                          tmp_path / "run")
    assert said == (f"python -m histo_exp optimizer=rmsprop 'model.filters={{choice: [4, 8]}}' "
                    f"tuner.directory={tmp_path}/run")
