"""Same config, same bytes: two checkouts in different directories, separate processes and caches."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from onnxbuild.pipeline import run_build
from tests.conftest import REPO, TINY, compose_config


def checkout_copy(dest: Path) -> Path:
    """A git clone of the repository plus the working tree's uncommitted changes."""
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(dest)], check=True)
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--modified", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
        else:
            (dest / name).unlink(missing_ok=True)  # deleted in the working tree
    return dest


def digests(run_dir: Path) -> dict[str, str]:
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    skip = {"report.json", "onnxbuild.log", "status.json"}  # run records: times, paths, host
    return {
        p.relative_to(run_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
        if p.name not in skip and ".hydra" not in p.parts
    }


def test_two_checkouts_build_identical_artifacts(tmp_path: Path) -> None:
    procs = []
    for name in ("one", "two"):
        repo = checkout_copy(tmp_path / name / "repo")
        env = {**os.environ, "PYTHONPATH": str(repo), "ONNXBUILD_CACHE_DIR": str(tmp_path / name / "cache")}
        env.pop("HYDRA_FULL_ERROR", None)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "onnxbuild", *TINY, f"hydra.run.dir={tmp_path / name / 'run'}"],
                cwd=tmp_path / name,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        _out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
    one, two = digests(tmp_path / "one" / "run"), digests(tmp_path / "two" / "run")
    expected = {
        "model.onnx",
        "manifest.json",
        "SHA256SUMS",
        "validation.json",
        "stages/capture.pt2",
        "stages/fx_optimize.pt2",
        "stages/convert.onnx",
        "stages/simplify.onnx",
    }
    assert expected <= set(one)
    assert one == two
    # No path leaked into the artifacts (torch.export keeps source paths in node stack traces).
    for name in ("one", "two"):
        run = tmp_path / name / "run"
        for rel in expected:
            assert str(tmp_path).encode() not in (run / rel).read_bytes(), rel


def test_manifest_records_inputs_versions_and_artifacts(tmp_path: Path) -> None:
    import json

    import torch
    from safetensors.torch import save_file

    from onnxbuild.artifacts import file_sha256
    from onnxbuild.pipeline import run_build
    from onnxbuild.zoo import TinyCNN
    from tests.conftest import compose_config

    torch.manual_seed(5)
    ckpt = tmp_path / "tiny.safetensors"
    save_file(TinyCNN().state_dict(), str(ckpt))
    result = run_build(compose_config([*TINY, f"model.checkpoint={ckpt}"]), tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest == json.loads(json.dumps(result.manifest))  # JSON turns int dim keys into str
    assert manifest["inputs"] == {
        "model.checkpoint": {"name": "tiny.safetensors", "sha256": file_sha256(ckpt)}
    }
    required = {
        "python",
        "torch",
        "torchvision",
        "onnx",
        "onnxscript",
        "onnxruntime",
        "onnxsim",
        "hydra-core",
        "omegaconf",
        "numpy",
    }
    assert required <= set(manifest["versions"])
    assert manifest["capture_strategy"] == "non_strict" and manifest["platform"]["system"]
    assert len(manifest["onnxbuild_source_sha256"]) == 64 and "onnxbuild_git" in manifest
    assert "cache" not in manifest["config"] and "hydra" not in manifest["config"]
    [model] = manifest["artifacts"]
    assert model == {
        "path": "model.onnx",
        "size": (tmp_path / "run" / "model.onnx").stat().st_size,
        "sha256": file_sha256(tmp_path / "run" / "model.onnx"),
    }
    text = (tmp_path / "run" / "manifest.json").read_text()
    assert text == json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n"  # canonical
    for volatile in ("started_at", "wall_seconds", "host", "run_dir", str(tmp_path / "run")):
        assert volatile not in text
    assert (tmp_path / "run" / "SHA256SUMS").read_text() == f"{model['sha256']}  model.onnx\n"


def test_a_model_past_the_protobuf_limit_builds_with_external_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # vit_h_14 and regnet_y_128gf (2.5 GB of weights) failed in convert: ByteSize() itself raises
    # past 2 GiB. Lowering the threshold sends tiny_cnn down the same path: external data at every
    # stage, onnxruntime sessions from a file, onnxsim skipped (it cannot load such a model).
    from google.protobuf.message import EncodeError

    from onnxbuild import onnx_utils

    class Huge:
        def ByteSize(self) -> int:
            raise EncodeError("Failed to serialize proto")

    assert onnx_utils.is_large(Huge())
    monkeypatch.setattr(onnx_utils, "EXTERNAL_DATA_THRESHOLD", 1000)
    result = run_build(compose_config([*TINY, "cache=off"]), tmp_path / "run")
    run = tmp_path / "run"
    assert (run / "model.onnx.data").is_file() and (run / "stages" / "simplify.onnx.data").is_file()
    assert any("onnxsim skipped" in w for w in result.report["warnings"])
    assert result.report["validation"]["passed"]
    assert sorted(a["path"] for a in result.manifest["artifacts"]) == ["model.onnx", "model.onnx.data"]
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((3, 3, 32, 32), np.float32)})[0].shape == (3, 10)
