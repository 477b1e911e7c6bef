"""Exporter extension points end to end in onnxruntime: custom translations and control flow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from onnxbuild.errors import ConfigError, StageError
from onnxbuild.pipeline import run_build
from tests.conftest import compose_config

X8 = "input.inputs=[{name:x,dtype:float32,shape:[2,8],dynamic:{0:{name:batch,min:1,max:4}}}]"
TESTS_ALLOWED = ["allowed_target_prefixes=[tests.]", "translations.allowed_prefixes=[tests.]"]


def build(tmp_path: Path, model: str, *overrides: str):
    cfg = compose_config(
        ["model=custom", f"model._target_=tests.extension_models.{model}", X8, *TESTS_ALLOWED, *overrides]
    )
    return run_build(cfg, tmp_path / "run")


def ops(path: Path) -> set[tuple[str, str]]:
    return {(n.domain, n.op_type) for n in onnx.load(str(path)).graph.node}


def translate(op: str, function: str) -> str:
    return f"translations.table=[{{op:'{op}',function:tests.extension_models.{function}}}]"


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_override_of_an_existing_op_is_used_and_validated(tmp_path: Path) -> None:
    result = build(tmp_path, "ReluNet", translate("aten::relu", "relu_as_max"))
    graph_ops = ops(result.model_path)
    assert ("", "Max") in graph_ops and ("", "Relu") not in graph_ops  # the default would be Relu
    assert result.report["validation"]["passed"]
    convert = next(s for s in result.stages if s["name"] == "convert")
    assert convert["info"]["custom_translations"] == {"aten::relu": "tests.extension_models.relu_as_max"}


def test_op_mapped_to_onnxruntime_contrib_gelu(tmp_path: Path) -> None:
    result = build(tmp_path, "GeluNet", translate("torch.ops.aten.gelu.default", "gelu_contrib"))
    assert ("com.microsoft", "Gelu") in ops(result.model_path)
    assert result.report["validation"]["passed"]
    from tests.extension_models import GeluNet

    torch.manual_seed(0)
    model = GeluNet().eval()
    x = torch.randn(3, 8)
    np.testing.assert_allclose(ort_run(result.model_path, x.numpy()), model(x).detach().numpy(), atol=1e-5)


def test_custom_op_translated_to_standard_onnx(tmp_path: Path) -> None:
    result = build(
        tmp_path, "SoftsignNet", translate("onnxbuild_test::scaled_softsign", "scaled_softsign_onnx")
    )
    graph_ops = ops(result.model_path)
    assert all(domain == "" for domain, _ in graph_ops) and ("", "Abs") in graph_ops
    assert result.report["validation"]["passed"]


def test_custom_op_without_translation_fails_in_convert_naming_the_op(tmp_path: Path) -> None:
    with pytest.raises(StageError) as info:
        build(tmp_path, "SoftsignNet")
    assert info.value.stage == "convert"
    assert "scaled_softsign" in info.value.message


@pytest.mark.parametrize(
    ("entry", "key", "text"),
    [
        ("{op:'aten::relu',function:os.system}", "translations.table[0].function", "outside the allowlist"),
        (
            "{op:'aten::no_such_op',function:tests.extension_models.relu_as_max}",
            "translations.table[0].op",
            "no op",
        ),
        (
            "{op:relu,function:tests.extension_models.relu_as_max}",
            "translations.table[0].op",
            "not a torch op",
        ),
        (
            "{op:'aten::relu',function:tests.extension_models.missing}",
            "translations.table[0].function",
            "cannot import",
        ),
    ],
)
def test_bad_translation_entries_fail_before_any_work(
    tmp_path: Path, entry: str, key: str, text: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build(tmp_path, "ReluNet", f"translations.table=[{entry}]")
    assert info.value.key == key and text in info.value.message
    assert not (tmp_path / "run" / "stages").exists()


def test_torch_cond_exports_if_and_validates_both_branches(tmp_path: Path) -> None:
    result = build(
        tmp_path,
        "CondNet",
        "+input.named_sets={positive:{x:{low:0.1,high:1.0}},negative:{x:{low:-1.0,high:-0.1}}}",
    )
    assert ("", "If") in ops(result.model_path)
    assert not any("control flow" in w for w in result.report["warnings"])
    sets = {s["label"]: s for s in result.report["validation"]["input_sets"]}
    assert sets["set:positive"]["passed"] and sets["set:negative"]["passed"]
    # Both branches really differ: the same ONNX graph follows eager on a positive and a negative input.
    from tests.extension_models import CondNet

    torch.manual_seed(0)
    model = CondNet().eval()
    for sign in (1.0, -1.0):
        x = sign * (torch.rand(2, 8) + 0.1)
        np.testing.assert_allclose(
            ort_run(result.model_path, x.numpy()), model(x).detach().numpy(), atol=1e-5
        )


def test_cond_without_named_sets_warns_that_one_branch_may_be_untested(tmp_path: Path) -> None:
    result = build(tmp_path, "CondNet")
    assert any("control flow (If)" in w for w in result.report["warnings"])


def test_named_set_with_unknown_input_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build(tmp_path, "CondNet", "+input.named_sets={bad:{y:{low:0.0}}}")
    assert info.value.key == "input.named_sets.bad"


def test_data_dependent_python_if_fails_in_capture_pointing_to_torch_cond(tmp_path: Path) -> None:
    with pytest.raises(StageError) as info:
        build(tmp_path, "PythonIfNet")
    assert info.value.stage == "capture"
    assert "data-dependent" in info.value.message
    assert "torch.cond" in info.value.hint
    assert not (tmp_path / "run" / "model.onnx").exists()


@pytest.mark.parametrize("strategy", ["strict", "non_strict"])
def test_cond_hint_for_each_capture_strategy(tmp_path: Path, strategy: str) -> None:
    with pytest.raises(StageError) as info:
        build(tmp_path, "PythonIfNet", f"capture.strategy={strategy}")
    assert "torch.cond" in info.value.hint, info.value.one_line()


def test_cli_prints_the_cond_hint_and_exits_nonzero(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    proc = run_cli(
        [
            "model=custom",
            "model._target_=tests.extension_models.PythonIfNet",
            X8,
            "allowed_target_prefixes=[tests.]",
            f"hydra.run.dir={tmp_path}/run",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("onnxbuild: error:")]
    assert "[capture]" in line and "torch.cond" in line
    assert not (tmp_path / "run" / "model.onnx").exists()


def test_names_imported_into_an_allowed_module_are_refused(tmp_path: Path) -> None:
    # tests.extension_models does `from dataclasses import dataclass`: allowed prefix, foreign origin.
    with pytest.raises(ConfigError) as info:
        build(tmp_path, "ReluNet", translate("aten::relu", "dataclass"))
    assert "defined outside the allowlist" in info.value.message
    from onnxbuild.errors import ModelError
    from onnxbuild.models import resolve_target

    with pytest.raises(ModelError, match="defined outside the allowlist"):
        resolve_target("tests.extension_models.dataclass", ["tests."])
    with pytest.raises(ModelError, match="is a module"):
        resolve_target("onnxbuild.zoo.torch", ["onnxbuild."])
