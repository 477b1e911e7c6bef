"""Build errors that carry where they happened and what to do about it.

Every failure a user can cause (bad config, missing file, model that will not export, numeric
mismatch) is raised as a BuildError so the CLI can print exactly one actionable line.
"""

from __future__ import annotations

import re

# Terminal colour / style codes that some libraries put into exception texts.
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def plain_text(exc: BaseException, limit: int = 300) -> str:
    """An exception's text on one line, without terminal codes, cut at `limit`."""
    text = " ".join(ANSI.sub("", str(exc)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BuildError(Exception):
    """A user-facing build failure: stage, config key and a hint travel with the message."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        stage: str | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.stage = stage
        self.key = key
        self.hint = hint

    def one_line(self) -> str:
        """The single line the CLI prints: `[stage] key: message (hint: ...)`."""
        where = f"[{self.stage}] " if self.stage else ""
        key = f"{self.key}: " if self.key else ""
        hint = f" (hint: {self.hint})" if self.hint else ""
        text = f"{where}{key}{self.message}{hint}"
        return " ".join(text.split())

    def as_dict(self) -> dict[str, str | None]:
        return {"stage": self.stage, "key": self.key, "message": self.message, "hint": self.hint}


class ConfigError(BuildError):
    """The resolved configuration is inconsistent (caught before any work starts)."""

    exit_code = 2


class ModelError(BuildError):
    """The model cannot be created or its checkpoint cannot be loaded."""


class DeviceError(BuildError):
    """The requested device is not available on this machine."""

    exit_code = 2


class StageError(BuildError):
    """A pipeline stage failed (capture, fx_optimize, convert, simplify, validate)."""


class ValidationFailed(StageError):
    """onnxruntime disagrees with eager PyTorch beyond the configured tolerances."""

    exit_code = 3
