"""Logging helpers referenced from conf/hydra/job_logging."""

from __future__ import annotations

import logging

FILE_ONLY = {"file_only": True}


class ConsoleFilter(logging.Filter):
    """Drop records meant for the log file only (the CLI prints its own error line to stderr)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)
