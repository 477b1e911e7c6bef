"""Keep what torch prints while exporting out of the terminal and in the run's log.

A failed torch.export prints the partial FX graph straight to sys.stderr, and torch's own log
handlers (set up by torch._logging, not propagating to ours) add warnings with more graph dumps:
some 40 lines before the build's one error line. Inside `torch_output_to_log` both go to a buffer
that is written to onnxbuild.log only. With TORCH_LOGS set the user asked for torch's output, and
gets it where torch puts it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator

from onnxbuild.logutil import FILE_ONLY

log = logging.getLogger("onnxbuild")


def _torch_stream_handlers() -> list[logging.StreamHandler]:
    streams = (sys.stderr, sys.__stderr__, sys.stdout, sys.__stdout__)
    handlers: list[logging.StreamHandler] = []
    for name in ["torch", *logging.root.manager.loggerDict]:
        if name != "torch" and not name.startswith("torch."):
            continue
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            console = isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            )
            if console and getattr(handler, "stream", None) in streams:
                handlers.append(handler)
    return handlers


@contextlib.contextmanager
def torch_output_to_log(label: str) -> Iterator[None]:
    """Route torch's stderr prints and console log records to onnxbuild.log for the duration."""
    if os.environ.get("TORCH_LOGS"):
        yield
        return
    buffer = io.StringIO()
    swapped = [(handler, handler.setStream(buffer)) for handler in _torch_stream_handlers()]
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    finally:
        for handler, previous in swapped:
            if previous is not None:
                handler.setStream(previous)
        text = buffer.getvalue().strip()
        if text:
            log.info("%s: torch output (kept off the terminal):\n%s", label, text, extra=FILE_ONLY)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def library_logs_to_log(label: str, *logger_names: str) -> Iterator[None]:
    """Keep a library's warnings (with their tracebacks) off the terminal, in onnxbuild.log: e.g.
    onnxscript's version converter warns, traceback and all, before we raise our own one-line error."""
    collect = _Collect()
    loggers = [logging.getLogger(name) for name in logger_names]
    previous = [(logger, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.addHandler(collect)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, propagate in previous:
            logger.removeHandler(collect)
            logger.propagate = propagate
        if collect.lines:
            log.info(
                "%s: library output (kept off the terminal):\n%s",
                label,
                "\n".join(collect.lines),
                extra=FILE_ONLY,
            )
