"""``python -m histo_exp [overrides]``: the Hydra entry point, and the only place Hydra runs."""

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from histo_exp.config import CONFIG_DIR, config_yaml
from histo_exp.errors import one_line_errors
from histo_exp.settings import Settings
from histo_exp.signals import handle_stops
from histo_exp.tuning.resume import checked, resume_command
from histo_exp.tuning.search_folder import SearchFolder

log = logging.getLogger("histo_exp")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """Print the resolved config, run the experiment, return test AUC (for sweepers; None for a worker)."""
    log.info("config:\n%s", config_yaml(cfg))
    with one_line_errors():  # a stop ends it too: exit 130 (Ctrl-C) or 143 (SIGTERM)
        settings = checked(cfg)  # a bad value or a resume that cannot go on fails here, before Keras is imported
        from histo_exp.runner import run

        try:
            return run(cfg, settings).get("test_auc")
        except KeyboardInterrupt:
            say_how_to_resume(settings)
            raise


def say_how_to_resume(settings: Settings) -> None:
    """The command that resumes a stopped search, when it had begun (a launcher says its own)."""
    folder = SearchFolder.of(settings.tuner)
    if folder.role == "lone" and folder.holds_search():
        log.warning("to resume the search: %s",
                    resume_command(HydraConfig.get().overrides.task, Path(settings.tuner.directory)))


if __name__ == "__main__":
    handle_stops()
    main()
