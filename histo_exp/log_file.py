"""Lines for the run's log file only: a failed trial's whole traceback is kept there, one line on the console.

``conf/hydra/default.yaml`` puts ``NotOnConsole`` on Hydra's console handler.
"""

from __future__ import annotations

import logging

FILE_ONLY = "histo_exp.file_only"
file_log = logging.getLogger(FILE_ONLY)


class NotOnConsole(logging.Filter):
    """Keeps the ``histo_exp.file_only`` logger's records off the handler it is put on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(FILE_ONLY)
