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
