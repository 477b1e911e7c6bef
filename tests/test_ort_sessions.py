"""onnxruntime crashes while building a session: probed in a child process, never fatal to the build."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from onnxbuild import ort_sessions
from onnxbuild.errors import StageError
from tests.conftest import run_custom_cli


def identity_model(path: Path, elem_type: int) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", elem_type, [2])],
        [helper.make_tensor_value_info("y", elem_type, [2])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def fake_probe(monkeypatch: pytest.MonkeyPatch, codes: dict[str, int]) -> list[str]:
    probed: list[str] = []

    def probe(path: Path, level: str) -> int:
        probed.append(level)
        return codes.get(level, 0)

    monkeypatch.setattr(ort_sessions, "_probe", probe)
    return probed


def test_float32_graphs_and_cuda_are_not_probed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probed = fake_probe(monkeypatch, {})
    fp32 = identity_model(tmp_path / "f32.onnx", TensorProto.FLOAT)
    fp16 = identity_model(tmp_path / "f16.onnx", TensorProto.FLOAT16)
    assert ort_sessions.safe_level(fp32, "cpu", "validate") == ("ORT_ENABLE_ALL", None)
    assert ort_sessions.safe_level(fp16, "cuda", "validate") == ("ORT_ENABLE_ALL", None)
    assert probed == []
    assert ort_sessions.safe_level(fp16, "cpu", "validate") == ("ORT_ENABLE_ALL", None)
    assert probed == ["ORT_ENABLE_ALL"]


def test_a_crash_lowers_the_level_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probed = fake_probe(monkeypatch, {"ORT_ENABLE_ALL": -signal.SIGSEGV})
    level, note = ort_sessions.safe_level(
        identity_model(tmp_path / "m.onnx", TensorProto.FLOAT16), "cpu", "validate"
    )
    assert probed == ["ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED"] and level == "ORT_ENABLE_EXTENDED"
    assert "SIGSEGV at ORT_ENABLE_ALL" in note and "graph_optimization_level=ORT_ENABLE_EXTENDED" in note


def test_a_python_error_is_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # e.g. NOT_IMPLEMENTED for a bfloat16 kernel: the in-process session raises it with its own message.
    probed = fake_probe(monkeypatch, {"ORT_ENABLE_ALL": 1})
    path = identity_model(tmp_path / "m.onnx", TensorProto.BFLOAT16)
    assert ort_sessions.safe_level(path, "cpu", "validate") == ("ORT_ENABLE_ALL", None)
    assert probed == ["ORT_ENABLE_ALL"]


def test_crashing_at_every_level_is_one_stage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_probe(monkeypatch, {level: -signal.SIGSEGV for level in ort_sessions.LEVELS})
    with pytest.raises(StageError) as info:
        ort_sessions.safe_level(identity_model(tmp_path / "m.onnx", TensorProto.FLOAT16), "cpu", "validate")
    assert info.value.stage == "validate" and info.value.key == "device"
    assert "every optimization level" in info.value.message and "device=cuda" in info.value.hint


def test_the_real_probe_runs_onnxruntime_in_a_child(tmp_path: Path) -> None:
    assert (
        ort_sessions._probe(identity_model(tmp_path / "m.onnx", TensorProto.FLOAT16), "ORT_ENABLE_ALL") == 0
    )
    assert ort_sessions._probe(tmp_path / "missing.onnx", "ORT_ENABLE_ALL") > 0


def test_float16_attention_builds_instead_of_crashing(tmp_path: Path) -> None:
    """In-process, onnxruntime's CPU session for this graph segfaulted (exit 139, status "running")."""
    proc, run_dir = run_custom_cli(
        tmp_path,
        "models.half_attention",
        "input.inputs=[{name: x, dtype: float16, shape: [2, 8, 16], dynamic: {0: {name: batch, min: 1, max: 4}}}]",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "ok"
    report = json.loads((run_dir / "validation.json").read_text())
    assert report["passed"] is True
    if report["graph_optimization_level"] != "ORT_ENABLE_ALL":  # this onnxruntime crashed at ALL here
        assert "microsoft/onnxruntime#15494" in proc.stdout + proc.stderr
