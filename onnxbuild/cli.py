"""Command line: `python -m onnxbuild [overrides]` (Hydra). BuildError -> one line and exit code."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from onnxbuild.errors import BuildError
from onnxbuild.logutil import FILE_ONLY
from onnxbuild.schema import register

log = logging.getLogger("onnxbuild")


def config_dir() -> str:
    """conf/ inside the installed package (wheel), else the repository's conf/ (editable install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"onnxbuild config directory not found next to {here}")


register()


def _task(cfg: DictConfig) -> None:
    from onnxbuild.pipeline import run_build
    from onnxbuild.summary import format_summary

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        result = run_build(cfg, run_dir)
    except BuildError as exc:
        log.error("build failed: %s", exc.one_line(), extra=FILE_ONLY)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"onnxbuild: error: {exc.one_line()}", file=sys.stderr, flush=True)
        if multirun:
            return
        sys.exit(exc.exit_code)
    log.info("%s", format_summary(result.report))


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    _task(cfg)


def main() -> None:
    _hydra_main()
