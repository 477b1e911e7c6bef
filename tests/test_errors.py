"""Every user-caused failure is a BuildError naming the stage or key, and leaves no model.onnx."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file

from onnxbuild.errors import BuildError, ConfigError, DeviceError, ModelError, ValidationFailed
from onnxbuild.pipeline import run_build
from onnxbuild.zoo import TinyCNN
from tests.conftest import TINY, compose_config


def build(tmp_path: Path, *overrides: str):
    base = ["input=image32"] if any(o.startswith("model=") for o in overrides) else TINY
    return run_build(compose_config([*base, *overrides]), tmp_path / "run")


def build_custom(tmp_path: Path, target: str, *overrides: str):
    """A build of `tests.<target>` through model=custom (tests. allowed)."""
    return build(
        tmp_path,
        "model=custom",
        f"model._target_=tests.{target}",
        "allowed_target_prefixes=[tests.]",
        *overrides,
    )


def assert_nothing_published(tmp_path: Path) -> None:
    assert not (tmp_path / "run" / "model.onnx").exists()


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        build(tmp_path, f"model.checkpoint={tmp_path}/nope.safetensors")
    assert info.value.key == "model.checkpoint" and "not found" in info.value.message
    assert_nothing_published(tmp_path)


def test_unknown_target(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        build(tmp_path, "model._target_=torchvision.models.resnet999")
    assert info.value.key == "model._target_" and "cannot import" in info.value.message
    assert_nothing_published(tmp_path)


def test_a_target_that_resolves_to_nothing_is_a_config_error(tmp_path: Path) -> None:
    # The module exists (found without importing it), the attribute does not: found when torch is
    # imported, still before any stage ran, so the configuration's fault (exit 2).
    with pytest.raises(ModelError) as info:
        build_custom(tmp_path, "models.NoSuchFactory")
    assert info.value.key == "model._target_" and info.value.exit_code == 2
    assert_nothing_published(tmp_path)


def test_a_torchvision_arch_outside_the_zoo_points_to_model_custom(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build(tmp_path, "model=torchvision", "model.kwargs.arch=r3d_18")
    assert info.value.key == "model.kwargs.arch" and info.value.exit_code == 2
    assert "model._target_=torchvision.models.video.r3d_18" in info.value.hint


def test_target_outside_allowlist(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        build(tmp_path, "model._target_=os.system")
    assert "outside the allowlist" in info.value.message and "allowed_prefixes" in info.value.hint
    assert_nothing_published(tmp_path)


def test_allowlist_is_user_extensible(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        build_custom(tmp_path, "models.NotAModule")
    assert "not a torch.nn.Module" in info.value.message


def test_shape_that_contradicts_the_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build(tmp_path, "input.inputs.0.shape=[2,1,32,32]")
    assert info.value.key == "input.inputs" and info.value.stage == "capture"
    assert "[2, 1, 32, 32]" in info.value.message
    assert_nothing_published(tmp_path)


def test_validation_mismatch_fails_and_marks_artifact(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed) as info:
        build_custom(tmp_path, "models.CallCounterScale")
    assert info.value.stage == "validate" and "differs from eager" in info.value.message
    run = tmp_path / "run"
    assert_nothing_published(tmp_path)
    assert (run / "model.FAILED.onnx").is_file()
    assert (run / "validation.json").is_file()
    assert '"status": "failed"' in (run / "report.json").read_text()


def test_device_cuda_without_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError) as info:
        build(tmp_path, "device=cuda")
    assert "device=cpu" in info.value.hint
    assert not (tmp_path / "run" / "stages").exists()  # failed before any work


def test_one_line_message() -> None:
    err = BuildError("bad\nthing", stage="convert", key="opset", hint="try 18")
    assert err.one_line() == "[convert] opset: bad thing (hint: try 18)"


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_checkpoint_is_loaded(tmp_path: Path, fmt: str) -> None:
    torch.manual_seed(123)
    trained = TinyCNN().eval()
    path = tmp_path / f"weights.{fmt}"
    if fmt == "safetensors":
        save_file(trained.state_dict(), str(path))
    else:
        torch.save(trained.state_dict(), path)
    result = build(tmp_path, f"model.checkpoint={path}")
    x = torch.randn(3, 3, 32, 32)
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        session.run(None, {"input": x.numpy()})[0], trained(x).detach().numpy(), atol=1e-5, rtol=1e-4
    )
    assert result.manifest["inputs"]["model.checkpoint"]["sha256"]


def test_pickled_model_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(TinyCNN(), path)
    with pytest.raises(ModelError) as info:
        build(tmp_path, f"model.checkpoint={path}")
    assert "weights_only" in info.value.message and "pickled Python objects" in info.value.message
    assert "\x1b" not in info.value.one_line()


def test_corrupt_safetensors_and_a_directory_name_the_checkpoint_key(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelError) as info:
        build(tmp_path, f"model.checkpoint={path}")
    assert info.value.key == "model.checkpoint" and "cannot read broken.safetensors" in info.value.message
    with pytest.raises(ModelError) as info:
        build(tmp_path, f"model.checkpoint={tmp_path}")
    assert info.value.key == "model.checkpoint" and "is a directory" in info.value.message


def test_a_factory_that_tries_to_download_weights_gets_the_checkpoint_hint(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        build_custom(tmp_path, "models.Downloading")
    assert info.value.stage == "capture" and info.value.key == "model.kwargs"
    assert "URLError" in info.value.message and "never download" in info.value.hint


def test_the_download_hint_names_the_weight_arguments_left_at_their_default(tmp_path: Path) -> None:
    # torchvision's detection factories download backbone weights unless weights_backbone=None.
    with pytest.raises(ModelError) as info:
        build_custom(tmp_path, "models.detector", "input.inputs=[{name:x,dtype:float32,shape:[2,8]}]")
    assert "+model.kwargs.weights_backbone=null" in info.value.hint
    assert "model.kwargs.weights=" not in info.value.hint.replace("weights_backbone", "")


def test_checkpoint_for_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file(TinyCNN(width=4).state_dict(), str(path))
    with pytest.raises(ModelError) as info:
        build(tmp_path, f"model.checkpoint={path}")
    assert "does not fit" in info.value.message and "size mismatch" in info.value.message
    assert info.value.message.count("Error(s) in loading state_dict") == 1


def test_a_ddp_prefixed_checkpoint_gets_a_prefix_hint(tmp_path: Path) -> None:
    path = tmp_path / "ddp.safetensors"
    save_file({f"module.{k}": v for k, v in TinyCNN().state_dict().items()}, str(path))
    with pytest.raises(ModelError) as info:
        build(tmp_path, "model=tiny_cnn", f"model.checkpoint={path}")
    assert "prefix 'module.'" in info.value.hint


def test_errors_found_before_any_work_exit_2(tmp_path: Path) -> None:
    # A missing checkpoint is a ModelError, but found in preflight: the configuration's fault.
    from onnxbuild.errors import BuildError

    with pytest.raises(BuildError) as info:
        build(tmp_path, "model=tiny_cnn", f"model.checkpoint={tmp_path}/missing.safetensors")
    assert info.value.key == "model.checkpoint" and info.value.exit_code == 2


@pytest.mark.parametrize(
    ("target", "inputs", "message", "hint"),
    [
        (
            "tests.models.AddTwo",
            "[{name:a,dtype:float32,shape:[2,6],dynamic:{1:{name:seq,min:1,max:8}}},"
            "{name:b,dtype:float32,shape:[2,6],dynamic:{1:{name:seq_b,min:1,max:8}}}]",
            "must always be equal.; suggested fixes: seq_b = seq",
            "give both the same dim name",
        ),
        (
            "tests.validation_models.GRUNet",
            "[{name:x,dtype:float32,shape:[1,10,1],dynamic:{1:{name:time,min:2,max:16}}}]",
            "specialized it to be a constant (10)",
            "declare the dim static at that size",
        ),
    ],
)
def test_capture_constraint_failures_keep_torchs_diagnosis(
    tmp_path: Path, target: str, inputs: str, message: str, hint: str
) -> None:
    from onnxbuild.errors import StageError

    with pytest.raises(StageError) as info:
        build_custom(tmp_path, target.removeprefix("tests."), f"input.inputs={inputs}", "cache=off")
    assert info.value.stage == "capture" and message in info.value.message and hint in info.value.hint
    assert "non_strict and strict: " in info.value.message  # both strategies failed alike: said once


def test_bfloat16_graph_onnxruntime_cannot_run_on_cpu_gets_a_dtype_hint(tmp_path: Path) -> None:
    from onnxbuild.errors import StageError

    with pytest.raises(StageError) as info:
        build_custom(
            tmp_path, "models.bf16_linear", "input.inputs=[{name:x,dtype:bfloat16,shape:[2,8]}]", "cache=off"
        )
    assert info.value.stage == "validate" and info.value.key == "input.inputs"
    assert "no bfloat16 kernel" in info.value.message and "float16 or float32" in info.value.hint


def test_an_unexpected_stage_failure_names_its_cause_and_logs_the_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import sys
    import types

    from onnxbuild.context import BuildContext
    from onnxbuild.errors import StageError
    from onnxbuild.pipeline import StageSpec, _run_stage
    from tests.conftest import compose_config

    def run(ctx, section, upstream):
        try:
            {}["missing"]
        except KeyError as exc:
            raise RuntimeError("check the warnings above") from exc

    module = types.ModuleType("fake_stage")
    module.run = run
    monkeypatch.setitem(sys.modules, "fake_stage", module)
    ctx = BuildContext(cfg=compose_config(TINY), run_dir=tmp_path, specs=[])
    with pytest.raises(StageError) as info, caplog.at_level("ERROR", logger="onnxbuild"):
        _run_stage(StageSpec("fake", "fake_stage", lambda cfg: None), ctx, None)
    assert info.value.stage == "fake"
    assert "RuntimeError: check the warnings above (caused by KeyError: 'missing')" in info.value.message
    assert "onnxbuild.log" in info.value.hint
    assert any("Traceback" in r.getMessage() and "KeyError" in r.getMessage() for r in caplog.records)
