"""status.json: each run dir says for itself whether its build finished, and if not, where and why.

Written by the job (in whatever process or machine ran it) and read back from disk by the sweep
summary, so a sweep's outcome never depends on in-memory results of other processes.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from onnxbuild.artifacts import write_json_atomic

STATUS_FILE = "status.json"
RUNNING = "running"
OK = "ok"
FAILED = "failed"


def one_line(text: str, limit: int = 400) -> str:
    """Collapse whitespace so a reason fits one line of a log, CSV cell or table row."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class JobStatus:
    """The status.json of one run dir: `running` when the job starts, `ok` or `failed` at the end.

    A file still saying `running` after the sweep means the job was killed (timeout, OOM, crash).
    """

    def __init__(self, run_dir: Path, job: int | None = None, overrides: list[str] | None = None) -> None:
        self.path = run_dir / STATUS_FILE
        self.data: dict[str, Any] = {
            "status": RUNNING,
            "job": job,
            "overrides": list(overrides or []),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self._t0 = time.perf_counter()

    def start(self, **extra: Any) -> None:
        self.data.update(extra)
        write_json_atomic(self.path, self.data)

    def ok(self, **extra: Any) -> None:
        self._finish(OK, stage=None, reason=None, exit_code=0, **extra)

    def failed(self, stage: str, reason: str, exit_code: int, **extra: Any) -> None:
        self._finish(FAILED, stage=stage, reason=one_line(reason), exit_code=exit_code, **extra)

    def _finish(self, status: str, **fields: Any) -> None:
        self.data.update(fields)
        self.data["status"] = status
        self.data["seconds"] = round(time.perf_counter() - self._t0, 3)
        write_json_atomic(self.path, self.data)


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The job's status.json, or None when the job never wrote one (or it is unreadable)."""
    try:
        return json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
