"""Hydra callbacks. SweepSummary: summary.csv / summary.md at the sweep root after a multirun.

Configured in conf/config.yaml under hydra.callbacks. It runs in the launching process after
every job returned, and reads each job's files from disk, so it works for jobs that ran in
joblib workers, submitit processes or on cluster nodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from onnxbuild.sweep import SUMMARY_CSV, SUMMARY_MD, SweepOutcome, write_summary

# The outcome of the last sweep in this process; cli.main() turns failures into the exit code.
_last_outcome: SweepOutcome | None = None
# A started sweep whose summary is not written yet (Hydra skips on_multirun_end when a launcher
# raises, e.g. a worker process killed by a segfault or the OOM killer).
_pending: tuple[Path, bool] | None = None


def last_outcome() -> SweepOutcome | None:
    return _last_outcome


def reset() -> None:
    global _last_outcome, _pending
    _last_outcome = None
    _pending = None


def summarize(sweep_dir: Path, print_table: bool = True) -> SweepOutcome | None:
    """Write and print the summary of the sweep dir; remember its outcome for the exit code."""
    global _last_outcome, _pending
    _pending = None
    if not sweep_dir.is_dir():
        return None
    outcome = write_summary(sweep_dir)
    _last_outcome = outcome
    if print_table:
        # print, not logging: after a sequential sweep the root logger still writes to the
        # last job's log file.
        print((sweep_dir / SUMMARY_MD).read_text(encoding="utf-8"), flush=True)
        print(f"summary: {sweep_dir / SUMMARY_CSV}", flush=True)
    return outcome


def summarize_pending() -> SweepOutcome | None:
    """After an aborted sweep: summarise whatever the jobs left on disk."""
    return None if _pending is None else summarize(*_pending)


class SweepSummary(Callback):
    """Summarise a multirun from the run dirs on disk and print the table."""

    def __init__(self, print_table: bool = True) -> None:
        self.print_table = print_table

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _pending
        _pending = (Path(str(config.hydra.sweep.dir)), self.print_table)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summarize(Path(str(config.hydra.sweep.dir)), self.print_table)
