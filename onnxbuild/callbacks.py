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


def last_outcome() -> SweepOutcome | None:
    return _last_outcome


def reset() -> None:
    global _last_outcome
    _last_outcome = None


class SweepSummary(Callback):
    """Summarise a multirun from the run dirs on disk and print the table."""

    def __init__(self, print_table: bool = True) -> None:
        self.print_table = print_table

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _last_outcome
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        outcome = write_summary(sweep_dir)
        _last_outcome = outcome
        if self.print_table:
            # print, not logging: after a sequential sweep the root logger still writes to the
            # last job's log file.
            print((sweep_dir / SUMMARY_MD).read_text(encoding="utf-8"), flush=True)
            print(f"summary: {sweep_dir / SUMMARY_CSV}", flush=True)
