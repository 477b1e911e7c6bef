from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from onnxbuild.cli import config_dir
from onnxbuild.schema import register

REPO = Path(__file__).resolve().parent.parent
TINY = ["model=tiny_cnn", "input=image32"]

register()


def compose_config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture
def make_cfg() -> Callable[..., DictConfig]:
    return lambda *overrides: compose_config(list(overrides))


def run_cli(
    args: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: int = 600,
    keep_full_error: bool = False,
) -> subprocess.CompletedProcess:
    """Run `python -m onnxbuild` in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("ONNXBUILD_COMPACT_ERRORS", None)  # set by cli.main() in-process tests
    if not keep_full_error:
        full_env.pop("HYDRA_FULL_ERROR", None)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "onnxbuild", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_custom_cli(tmp_path: Path, target: str, *overrides: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`python -m onnxbuild model=custom` for `tests.<target>` (cache off); returns (process, run dir)."""
    run_dir = tmp_path / "run"
    args = [
        "model=custom",
        f"model._target_=tests.{target}",
        "allowed_target_prefixes=[tests.]",
        *overrides,
        "cache=off",
        f"hydra.run.dir={run_dir}",
    ]
    return run_cli(args, cwd=tmp_path), run_dir


@pytest.fixture(autouse=True, scope="session")
def _session_stage_cache(tmp_path_factory: pytest.TempPathFactory):
    """Builds in tests (in-process and CLI subprocesses) share a stage cache in a temp dir,
    never the checkout's outputs/.cache."""
    previous = os.environ.get("ONNXBUILD_CACHE_DIR")
    os.environ["ONNXBUILD_CACHE_DIR"] = str(tmp_path_factory.mktemp("stage-cache"))
    yield
    if previous is None:
        os.environ.pop("ONNXBUILD_CACHE_DIR", None)
    else:
        os.environ["ONNXBUILD_CACHE_DIR"] = previous
