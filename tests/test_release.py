"""`+release=default`: strict settings enforced before any work, and a self-checking bundle."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from onnxbuild.errors import ConfigError
from onnxbuild.pipeline import run_build
from tests.conftest import TINY, compose_config, run_cli


def test_release_preset_settings() -> None:
    cfg = compose_config([*TINY, "+release=default"])
    assert cfg.cache.enabled is False and cfg.deterministic is True
    assert cfg.capture.strategy == "non_strict" and cfg.validation.enabled
    assert cfg.validation.include_example_shape and cfg.validation.include_odd_shape
    assert cfg.release.enabled and cfg.release.root == "release"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("capture.strategy=auto", "capture.strategy"),
        ("validation.enabled=false", "validation.enabled"),
        ("validation.include_odd_shape=false", "validation.include_odd_shape"),
        ("validation.include_example_shape=false", "validation.include_example_shape"),
        ("cache.enabled=true", "cache.enabled"),
        ("deterministic=false", "deterministic"),
    ],
)
def test_release_refuses_weaker_settings(tmp_path: Path, override: str, key: str) -> None:
    cfg = compose_config([*TINY, "+release=default", override, f"release.root={tmp_path / 'release'}"])
    with pytest.raises(ConfigError) as info:
        run_build(cfg, tmp_path / "run")
    assert info.value.key == key
    assert not (tmp_path / "run" / "stages").exists() and not (tmp_path / "release").exists()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("validation.atol=1", "validation.atol"),
        ("+validation.outputs.output.rtol=0.5", "validation.outputs.output"),
        ("validation.precision_defaults.float32.atol=0.1", "validation.precision_defaults"),
    ],
)
def test_release_refuses_a_looser_tolerance(tmp_path: Path, override: str, key: str) -> None:
    cfg = compose_config([*TINY, "+release=default", override, f"release.root={tmp_path / 'release'}"])
    with pytest.raises(ConfigError) as info:
        run_build(cfg, tmp_path / "run")
    assert info.value.key == key and "looser than the precision float32 default" in info.value.message
    assert not (tmp_path / "run" / "model.onnx").exists() and not (tmp_path / "release").exists()


def test_release_accepts_a_tighter_tolerance(tmp_path: Path) -> None:
    cfg = compose_config(
        [*TINY, "+release=default", "validation.atol=1e-5", f"release.root={tmp_path / 'release'}"]
    )
    assert run_build(cfg, tmp_path / "run").model_path is not None


def test_release_bundle(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, "+release=default", f"release.root={tmp_path / 'release'}"])
    result = run_build(cfg, tmp_path / "run")
    assert result.report["cache"] == {"enabled": False}
    [bundle] = (tmp_path / "release").iterdir()
    assert re.fullmatch(r"tiny_cnn-opset18-[0-9a-f]{12}", bundle.name)
    assert Path(result.report["release_bundle"]) == bundle.resolve()
    names = sorted(p.name for p in bundle.iterdir())
    assert names == ["SHA256SUMS", "config.yaml", "manifest.json", "model.onnx", "validation.json"]
    assert (bundle / "model.onnx").read_bytes() == (tmp_path / "run" / "model.onnx").read_bytes()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["config"]["release"]["enabled"] and manifest["config"]["deterministic"]
    assert json.loads((bundle / "validation.json").read_text())["passed"]
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=bundle, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.count(": OK") == 4
        run_check = subprocess.run(
            ["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path / "run", capture_output=True, text=True
        )
        assert run_check.returncode == 0 and "model.onnx: OK" in run_check.stdout


@pytest.mark.parametrize(
    ("override", "key"), [("cache=on", "cache"), ("release.enabled=false", "release.enabled")]
)
def test_release_refuses_what_the_preset_would_silently_override(
    tmp_path: Path, override: str, key: str
) -> None:
    proc = run_cli(
        [*TINY, "+release=default", override, f"release.root={tmp_path / 'release'}"], cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    assert f"onnxbuild: error: {key}: " in proc.stderr and not (tmp_path / "release").exists()
