"""`python -m onnxbuild.verify`: a fresh build verifies; one changed byte fails, naming the file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from onnxbuild.pipeline import run_build
from tests.conftest import REPO, TINY, compose_config


def run_verify(run_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "onnxbuild.verify", "-q", str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_verify_passes_then_names_the_changed_file(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_build(compose_config([*TINY, "opset=17"]), run_dir)
    ok = run_verify(run_dir)
    assert ok.returncode == 0, ok.stdout + ok.stderr[-2000:]
    assert "match    model.onnx" in ok.stdout and "verify: OK" in ok.stdout

    model = run_dir / "model.onnx"
    os.chmod(model, 0o644)  # published files are read-only
    data = bytearray(model.read_bytes())
    data[len(data) // 3] ^= 0x01
    model.unlink()  # a new file: the read-only original is shared with the cache
    model.write_bytes(bytes(data))
    bad = run_verify(run_dir)
    assert bad.returncode == 1
    assert "MISMATCH model.onnx" in bad.stdout and "file in run dir" in bad.stdout
    assert "rebuild gives" not in bad.stdout  # the rebuild itself still matches the manifest
    assert "verify: FAILED" in bad.stdout


def test_verify_refuses_a_directory_without_manifest(tmp_path: Path) -> None:
    proc = run_verify(tmp_path)
    assert proc.returncode == 1 and "manifest.json" in proc.stdout


def test_environment_differences_name_the_tool() -> None:
    from onnxbuild.verify import environment_differences
    from onnxbuild.versions import platform_info, tool_versions

    recorded = {"versions": {**tool_versions(), "torch": "0.0.1"}, "platform": platform_info()}
    assert environment_differences(recorded) == [f"torch: recorded 0.0.1, here {tool_versions()['torch']}"]
    assert environment_differences({"versions": tool_versions(), "platform": platform_info()}) == []


def test_verify_names_a_changed_local_model_module() -> None:
    from onnxbuild.fingerprint import target_identity
    from onnxbuild.verify import model_code_differences

    cfg = compose_config(
        ["model=custom", "model._target_=tests.models.random_tiny", "allowed_target_prefixes=[tests.]"]
    )
    recorded = target_identity("tests.models.random_tiny")
    assert "tests.models" in recorded["local_modules"]
    assert model_code_differences(cfg, {"model_code": recorded}) == []
    edited = {**recorded, "local_modules": {**recorded["local_modules"], "tests.models": "0" * 64}}
    assert model_code_differences(cfg, {"model_code": edited}) == [
        "model code: local module tests.models changed"
    ]
