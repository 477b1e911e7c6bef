"""Validation you can trust: input sets, statistics, tolerances, weak/random findings, diagnosis.

Includes the issue's five handed cases, each asserting its verdict and message.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from omegaconf import OmegaConf

from onnxbuild.compare import compare_output, resolve_tolerance, weak_reason
from onnxbuild.errors import ConfigError, ValidationFailed
from onnxbuild.inputs import load_samples, make_tensor, parse_specs, validation_input_sets
from onnxbuild.onnx_utils import input_dims
from onnxbuild.pipeline import run_build
from tests.conftest import TINY, compose_config, run_cli

CUSTOM = ["model=custom", "allowed_target_prefixes=[tests.]", "input=image32"]


def custom(target: str, inputs: str, *extra: str) -> list[str]:
    return [*CUSTOM, f"model._target_=tests.validation_models.{target}", f"input.inputs={inputs}", *extra]


def build(tmp_path: Path, overrides: list[str]):
    return run_build(compose_config(overrides), tmp_path / "run")


def validation_json(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "run" / "validation.json").read_text())


# ---------------------------------------------------------------- input sets and value profiles


def test_input_sets_are_shapes_plus_edge_profiles_at_the_smallest_shape() -> None:
    specs = parse_specs(compose_config(TINY).input)
    sets = validation_input_sets(specs, seed=1, profiles=["normal", "zeros", "large"])
    assert [s.label for s in sets] == ["min", "min/zeros", "min/large", "max", "example", "odd"]
    assert all(s.sizes == {"batch": 1} for s in sets[:3])
    assert len({s.seed for s in sets}) == len(sets)
    every = validation_input_sets(specs, seed=1, profiles=["normal", "zeros"], edge_at_every_shape=True)
    assert len(every) == 8
    with pytest.raises(ConfigError) as info:
        validation_input_sets(specs, seed=1, profiles=["normal", "weird"])
    assert info.value.key == "validation.profiles"


def test_value_profiles_per_dtype() -> None:
    cfg = compose_config(
        [
            *TINY,
            "input.inputs=[{name:ids,dtype:int64,shape:[2,6],low:3,high:9},{name:mask,dtype:bool,shape:[2,6]},"
            "{name:x,dtype:float32,shape:[2,6]}]",
        ]
    )
    ids, mask, x = parse_specs(cfg.input)
    gen = torch.Generator().manual_seed(0)
    assert make_tensor(mask, [2, 6], gen, "zeros").logical_not().all()
    assert make_tensor(mask, [2, 6], gen, "large").all()
    random_mask = make_tensor(mask, [50, 50], gen, "normal")
    assert random_mask.any() and not random_mask.all()
    assert (make_tensor(ids, [2, 6], gen, "zeros") == 3).all() and (
        make_tensor(ids, [2, 6], gen, "large") == 8
    ).all()
    normal_ids = make_tensor(ids, [40, 40], gen, "normal")
    assert normal_ids.min() == 3 and normal_ids.max() == 8 and normal_ids.dtype == torch.int64
    assert (make_tensor(x, [2, 6], gen, "zeros") == 0).all()
    assert make_tensor(x, [100, 100], gen, "large", large=10.0).abs().max() > 20


def test_samples_are_used_as_is_and_checked(tmp_path: Path) -> None:
    specs = parse_specs(compose_config(TINY).input)
    x = np.arange(3 * 3 * 32 * 32, dtype=np.float32).reshape(3, 3, 32, 32)
    np.savez(tmp_path / "a.npz", input=x)
    [sample] = load_samples(specs, str(tmp_path / "a.npz"))
    assert sample.label == "sample:a" and sample.sizes == {"batch": 3}
    np.testing.assert_array_equal(sample.values(specs)["input"].numpy(), x)
    np.savez(tmp_path / "b.npz", input=x.astype(np.float64))
    with pytest.raises(ConfigError) as info:
        load_samples(specs, str(tmp_path))
    assert info.value.key == "validation.samples" and "float64" in info.value.message
    np.savez(tmp_path / "b.npz", input=x[:, :1])
    with pytest.raises(ConfigError) as info:
        load_samples(specs, str(tmp_path))
    assert "[3, 1, 32, 32]" in info.value.message
    (tmp_path / "b.npz").unlink()
    np.savez(tmp_path / "c.npz", other=x)
    with pytest.raises(ConfigError) as info:
        load_samples(specs, str(tmp_path))
    assert "missing ['input']" in info.value.message


def test_int_and_bool_inputs_build_with_all_profiles(tmp_path: Path) -> None:
    result = build(
        tmp_path,
        custom(
            "MaskAndTokens",
            "[{name:ids,dtype:int64,shape:[2,5],low:0,high:50,dynamic:{0:{name:batch,min:1,max:4}}},"
            "{name:mask,dtype:bool,shape:[2,5],dynamic:{0:{name:batch,min:1,max:4}}}]",
        ),
    )
    report = validation_json(tmp_path)
    assert report["passed"] and not report["weak"]
    labels = [s["label"] for s in report["input_sets"]]
    assert "min/zeros" in labels and "min/large" in labels
    assert result.model_path.name == "model.onnx"


# ---------------------------------------------------------------- statistics and tolerances


def test_statistics_and_minimum_passing_tolerances() -> None:
    ref = np.array([1.0, 2.0, -4.0, 0.0], dtype=np.float32)
    act = np.array([1.0, 2.1, -4.0, 0.05], dtype=np.float32)
    stats = compare_output(ref, act, atol=1e-3, rtol=1e-3)
    assert not stats["passed"] and stats["max_abs"] == pytest.approx(0.1, rel=1e-5)
    assert stats["mean_abs"] == pytest.approx(0.0375, rel=1e-4)
    assert stats["max_rel"] == float("inf")  # a difference where the reference is 0
    # The reported minimum tolerances really are the boundary.
    assert compare_output(ref, act, atol=stats["min_atol_to_pass"] * 1.0001, rtol=1e-3)["passed"]
    assert not compare_output(ref, act, atol=stats["min_atol_to_pass"] * 0.99, rtol=1e-3)["passed"]
    nan_ref = np.array([np.nan, 1.0], dtype=np.float32)
    stats = compare_output(nan_ref, np.array([0.0, 1.0], dtype=np.float32), 1e-3, 1e-3)
    assert not stats["passed"] and stats["reference_nan"] == 1 and stats["actual_nan"] == 0
    assert "NaN/Inf" in stats["reason"]
    assert compare_output(nan_ref, nan_ref.copy(), 1e-3, 1e-3)["passed"]
    shape = compare_output(np.zeros((2, 3)), np.zeros((3, 2)), 1e-3, 1e-3)
    assert not shape["passed"] and "shape" in shape["reason"]
    dtype = compare_output(np.zeros(3, np.int64), np.zeros(3, np.int32), 0, 0)
    assert not dtype["passed"] and "dtype" in dtype["reason"]


def test_tolerances_by_precision_global_and_per_output() -> None:
    section = compose_config(TINY).validation
    assert resolve_tolerance("out", "float32", "float32", section)[:2] == (1e-4, 1e-3)
    fp16 = resolve_tolerance("out", "float32", "float16", section)
    assert fp16[:2] == (1e-2, 1e-2) and fp16[2] == "precision float16"
    assert resolve_tolerance("out", "bfloat16", "float32", section)[:2] == (5e-2, 5e-2)
    assert resolve_tolerance("ids", "int64", "float32", section)[:2] == (0.0, 0.0)
    section = compose_config(
        [*TINY, "validation.atol=1e-6", "+validation.outputs.probs.atol=1e-2"]
    ).validation
    assert resolve_tolerance("logits", "float32", "float32", section) == (1e-6, 1e-3, "validation.atol")
    assert resolve_tolerance("probs", "float32", "float32", section)[:2] == (1e-2, 1e-3)


def test_per_output_override_decides_the_verdict(tmp_path: Path) -> None:
    base = custom("TwoOutputs", "[{name:x,dtype:float32,shape:[2,4]}]")
    with pytest.raises(ValidationFailed) as info:
        build(tmp_path, [*base, "+validation.outputs.logits.atol=0.0", "+validation.outputs.logits.rtol=0.0"])
    assert info.value.key == "validation.outputs.logits" and "'logits'" in info.value.message
    report = validation_json(tmp_path)
    assert report["tolerances"]["probs"]["source"] == "precision float32"
    assert all(s["outputs"]["probs"]["passed"] for s in report["input_sets"])


# ---------------------------------------------------------------- not fooled


def test_weak_reason_flags_zero_and_constant_outputs() -> None:
    zero = [np.zeros((2, 3)), np.full((2, 3), 1e-9)]
    assert "near-)zero" in weak_reason(zero, [zero], 1e-4, 1e-3)
    const = [np.array([1.0, 2.0]), np.array([1.0, 2.0])]
    assert "does not change" in weak_reason(const, [const], 1e-4, 1e-3)
    moving = [np.array([1.0, 2.0]), np.array([1.5, 2.0])]
    assert weak_reason(moving, [moving], 1e-4, 1e-3) is None


def test_zero_head_with_default_init_is_weak_and_can_fail(tmp_path: Path) -> None:
    base = custom("ZeroHead", "[{name:x,dtype:float32,shape:[2,4],dynamic:{0:{name:batch,min:1,max:4}}}]")
    result = build(tmp_path, [*base, "model.init=default"])
    assert result.report["validation"]["weak"] and result.report["validation"]["degenerate_outputs"] == [
        "output"
    ]
    assert any(
        "output 'output'" in w and "weak" in w and "model.checkpoint" in w for w in result.report["warnings"]
    )
    assert result.manifest["model_init"]["mode"] == "default"
    with pytest.raises(ValidationFailed) as info:
        build(tmp_path, [*base, "model.init=default", "validation.require_informative=true"])
    assert info.value.key == "validation.require_informative" and "(near-)zero" in info.value.message
    assert (tmp_path / "run" / "model.FAILED.onnx").is_file() and not (
        tmp_path / "run" / "model.onnx"
    ).exists()
    # The informative init (default without a checkpoint) redraws the zero head.
    result = build(tmp_path, [*base, "validation.require_informative=true"])
    assert not result.report["validation"]["weak"]
    assert result.manifest["model_init"]["mode"] == "informative"
    assert "head.weight" in result.manifest["model_init"]["redrawn_weights"]


def test_informative_init_calibrates_batchnorm_and_is_recorded(tmp_path: Path) -> None:
    result = build(tmp_path, TINY)
    init = result.manifest["model_init"]
    assert init["mode"] == "informative" and init["batchnorm_calibrated"] == 2
    with pytest.raises(ConfigError) as info:
        build(tmp_path, [*TINY, "model.init=checkpoint"])
    assert info.value.key == "model.init"


def test_handed_case_1_random_op_is_non_deterministic_not_a_mismatch(tmp_path: Path) -> None:
    base = custom("RandomAdd", "[{name:x,dtype:float32,shape:[2,3]}]")
    result = build(tmp_path, base)
    report = validation_json(tmp_path)
    assert report["passed"] and result.model_path.name == "model.onnx"
    assert report["nondeterministic"]["finding"].startswith("non-deterministic graph: RandomNormal")
    assert report["nondeterministic"]["outputs"] == {
        "output": [report["nondeterministic"]["random_nodes"][0][0]]
    }
    assert all(s["outputs"]["output"]["passed"] is None for s in report["input_sets"])
    assert any("non-deterministic graph: RandomNormal" in w for w in result.report["warnings"])
    # Nothing was compared: the summary must not read like a clean pass.
    assert (report["outputs_compared"], report["outputs_not_compared"]) == ([], ["output"])
    from onnxbuild.summary import format_summary

    assert "validation: NOTHING COMPARED (0 of 1 outputs compared" in format_summary(result.report)
    with pytest.raises(ValidationFailed) as info:
        build(tmp_path, [*base, "validation.random_ops=fail"])
    assert info.value.message.startswith("non-deterministic graph: RandomNormal")
    assert info.value.key == "validation.random_ops" and "differs" not in info.value.message


def test_handed_case_1_names_the_onnx_op() -> None:
    from onnxbuild.nondeterminism import outputs_fed_by, random_nodes

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
    z = onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [2, 3])
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("RandomNormalLike", ["x"], ["r"], name="rand"),
            onnx.helper.make_node("Add", ["x", "r"], ["y"], name="add"),
            onnx.helper.make_node("Relu", ["x"], ["z"], name="relu"),
        ],
        "g",
        [x],
        [y, z],
    )
    model = onnx.helper.make_model(graph)
    assert random_nodes(model) == [("rand", "RandomNormalLike")]
    assert outputs_fed_by(model, {"rand"}) == {"y": ["rand"], "z": []}


# ---------------------------------------------------------------- diagnosis


def _wrong_relu(x):  # noqa: ANN001, ANN202 (onnxscript tensor)
    from onnxscript import opset18 as op

    return op.Sigmoid(x)


def test_broken_translation_names_the_first_diverging_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Test-only hook: the exporter maps aten.relu to Sigmoid, as a wrong custom translation would.
    table = {torch.ops.aten.relu.default: _wrong_relu}
    monkeypatch.setattr(
        torch.onnx, "export", functools.partial(torch.onnx.export, custom_translation_table=table)
    )
    with pytest.raises(ValidationFailed) as info:
        build(tmp_path, [*TINY, "cache=off"])  # the patch is invisible to cache keys
    message = info.value.message
    assert "first diverging node: 'node_relu' (Sigmoid), FX node 'relu' (aten.relu.default)" in message
    assert "in module 'features.2'" in message and "[convert stage]" in message
    diagnosis = validation_json(tmp_path)["diagnosis"]
    node = diagnosis["first_diverging_node"]
    assert diagnosis["stage"] == "convert" and node["module_class"] == "torch.nn.modules.activation.ReLU"
    assert node["max_abs"] > 0.1
    assert (tmp_path / "run" / "model.FAILED.onnx").is_file()


def test_python_state_baked_in_is_blamed_on_capture(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed) as info:
        build(tmp_path, [*CUSTOM, "model._target_=tests.models.CallCounterScale"])
    assert "capture stage" in info.value.message
    assert validation_json(tmp_path)["diagnosis"]["stage"] == "capture"


def test_a_forward_that_updates_a_buffer_is_named_as_the_cause(tmp_path: Path) -> None:
    """An EMA buffer updated in forward: eager drifts call by call, the ONNX graph has no state. The
    error used to blame the float32 noise floor and hint at a looser atol."""
    inputs = "[{name:x,dtype:float32,shape:[2,8],dynamic:{0:{name:batch,min:1,max:4}}}]"
    with pytest.raises(ValidationFailed) as info:
        build(tmp_path, [*CUSTOM, "model._target_=tests.models.RunningMean", f"input.inputs={inputs}"])
    assert "updates buffer(s) 'ema'" in info.value.message and "noise floor" not in info.value.message
    assert info.value.key == "model._target_" and "self.training" in info.value.hint
    assert "atol" not in info.value.hint
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["stages"][0]["info"]["mutated_buffers"] == ["ema"]
    assert any("updates buffer(s) 'ema'" in w for w in report["warnings"])


def test_a_float16_input_to_a_float32_model_keeps_float32_tolerances(tmp_path: Path) -> None:
    inputs = "[{name:x,dtype:float16,shape:[2,8],dynamic:{0:{name:batch,min:1,max:4}}}]"
    build(
        tmp_path,
        [*CUSTOM, "model._target_=tests.models.FloatFromHalf", f"input.inputs={inputs}", "cache=off"],
    )
    tolerance = validation_json(tmp_path)["tolerances"]["output"]
    assert tolerance == {"atol": 1e-4, "rtol": 1e-3, "source": "precision float32"}


def test_batchnorm_in_eval_mutates_nothing(tmp_path: Path) -> None:
    result = build(tmp_path, ["model=tiny_cnn", "input=image32", "validation.enabled=false"])
    assert result.stages[0]["info"]["mutated_buffers"] == []


# ---------------------------------------------------------------- the other handed cases


def test_handed_case_2_int_output_is_one_line_naming_convert(tmp_path: Path) -> None:
    proc = run_cli(custom("NumelOutput", "[{name:x,dtype:float32,shape:[4,5]}]"), cwd=tmp_path)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("onnxbuild: error: [convert]")
    assert "output 'output' is a Python int" in lines[0] and "return a tensor" in lines[0]
    assert not list(tmp_path.glob("outputs/**/model.onnx"))


def test_handed_case_3_batch_example_of_1_is_traced_at_2_and_validated_at_1_and_max(tmp_path: Path) -> None:
    result = build(tmp_path, [*TINY, "input.inputs.0.shape=[1,3,32,32]"])
    capture = next(s for s in result.stages if s["name"] == "capture")
    assert capture["info"]["example_sizes"] == {"batch": 2}
    assert input_dims(onnx.load(str(result.model_path)))["input"][0] == "batch"
    batches = {s["input_shapes"]["input"][0] for s in validation_json(tmp_path)["input_sets"] if s["passed"]}
    assert {1, 16} <= batches


@pytest.mark.parametrize(
    ("target", "inputs"),
    [
        ("GRUNet", "[{name:x,dtype:float32,shape:[1,10,1]}]"),
        ("MaskedScatter", "[{name:x,dtype:float32,shape:[1,8,8]}]"),
        ("BilinearToOne", "[{name:x,dtype:float32,shape:[1,3,10,10]}]"),
    ],
)
def test_handed_case_4_once_silently_wrong_now_validated(tmp_path: Path, target: str, inputs: str) -> None:
    extra = []
    if target == "MaskedScatter":  # the literal handed input: zeros (1, 8, 8), as a user sample
        np.savez(tmp_path / "zeros.npz", x=np.zeros((1, 8, 8), dtype=np.float32))
        extra = [f"validation.samples={tmp_path / 'zeros.npz'}"]
    result = build(tmp_path, custom(target, inputs, *extra))
    report = validation_json(tmp_path)
    assert report["passed"] and not report["weak"]
    assert report["max_abs_error"] <= 1e-5
    if target == "MaskedScatter":
        sample = next(s for s in report["input_sets"] if s["label"] == "sample:zeros")
        assert sample["passed"]
        # Each of the 8 rows takes 4 source values (mask on the last dim), scaled by 1..4.
        expected = np.zeros((1, 8, 8), dtype=np.float32)
        expected[0, :, :4] = (np.arange(32, dtype=np.float32).reshape(8, 4) + 1) * np.arange(1, 5)
        session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(session.run(None, {"x": np.zeros((1, 8, 8), np.float32)})[0], expected)
    assert result.model_path.name == "model.onnx"


def test_handed_case_5_constant_float_argument_is_baked_in_and_recorded(tmp_path: Path) -> None:
    xyz = ",".join(f"{{name:{n},dtype:float32,shape:[2,3]}}" for n in "xyz")
    proc = run_cli(custom("SumWithBias", f"[{xyz},{{name:bias,constant:true,value:0.5}}]"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "constant input 'bias' = 0.5 baked into the graph" in proc.stdout
    [model_path] = tmp_path.glob("outputs/**/model.onnx")
    manifest = json.loads((model_path.parent / "manifest.json").read_text())
    assert manifest["constants"] == {"bias": 0.5} and manifest["io"]["inputs"] == ["x", "y", "z"]
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x", "y", "z"]
    feed = {n: np.full((2, 3), i, dtype=np.float32) for i, n in enumerate("xyz")}
    np.testing.assert_allclose(session.run(None, feed)[0], np.full((2, 3), 3.5, dtype=np.float32))


def test_report_has_the_table_and_validation_json_every_set(tmp_path: Path) -> None:
    result = build(tmp_path, TINY)
    table = result.report["validation"]["table"]
    assert table[0].split()[:3] == ["input", "set", "output"] and len(table) == 1 + 6
    report = validation_json(tmp_path)
    for item in report["input_sets"]:
        stats = item["outputs"]["output"]
        for key in (
            "max_abs",
            "max_rel",
            "mean_abs",
            "p99_abs",
            "min_atol_to_pass",
            "min_rtol_to_pass",
            "reference_nan",
            "actual_inf",
            "shape",
            "dtype",
            "atol",
            "rtol",
        ):
            assert key in stats, key
    assert OmegaConf.create(report)  # plain JSON types


def test_init_default_is_the_models_own_seeded_init(tmp_path: Path) -> None:
    from onnxbuild.zoo import TinyCNN

    result = build(tmp_path, [*TINY, "model.init=default"])
    torch.manual_seed(0)
    reference = TinyCNN().eval()
    x = torch.randn(3, 3, 32, 32)
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        session.run(None, {"input": x.numpy()})[0], reference(x).detach().numpy(), atol=1e-5
    )
    assert result.manifest["model_init"] == {"mode": "default"}


def test_broken_simplification_is_blamed_on_simplify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxsim

    real = onnxsim.simplify

    def corrupting_simplify(model, *args, **kwargs):  # noqa: ANN001, ANN202
        simplified, ok = real(model, *args, **kwargs)
        relu = next(n for n in simplified.graph.node if n.op_type == "Relu")
        relu.op_type = "Sigmoid"
        return simplified, ok

    monkeypatch.setattr(onnxsim, "simplify", corrupting_simplify)
    with pytest.raises(ValidationFailed) as info:
        build(tmp_path, [*TINY, "cache=off"])  # the patch is invisible to cache keys
    diagnosis = validation_json(tmp_path)["diagnosis"]
    assert diagnosis["stage"] == "simplify"
    assert diagnosis["first_diverging_node"]["op_type"] == "Sigmoid"
    assert "[simplify stage]" in info.value.message and "(Sigmoid)" in info.value.message


@pytest.mark.parametrize(
    ("override", "key", "text"),
    [
        ("validation.atol=-1", "validation.atol", "finite number >= 0"),
        ("+validation.outputs.output.rtol=-0.5", "validation.outputs.output.rtol", ">= 0"),
        ("validation.profiles=[normal,bogus]", "validation.profiles", "unknown value profile(s) ['bogus']"),
        ("validation.random_ops=bogus", "validation.random_ops", "unknown random_ops policy"),
        ("validation.samples=/nonexistent/s.npz", "validation.samples", "not found"),
        ("+validation.outputs.output.bogus=1", "validation.outputs.output", "must be {atol"),
    ],
)
def test_bad_validation_settings_fail_before_any_stage(
    tmp_path: Path, override: str, key: str, text: str
) -> None:
    with pytest.raises(ConfigError) as info:
        run_build(compose_config([*TINY, "cache=off", override]), tmp_path / "run")
    assert info.value.key == key and text in info.value.message
    assert not (tmp_path / "run" / "stages").exists()  # nothing ran


def test_tolerance_for_an_unknown_output_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build(tmp_path, ["+validation.outputs.nosuch.atol=1e-3"])
    assert info.value.key == "validation.outputs.nosuch" and "['output']" in info.value.hint


@pytest.mark.parametrize(
    ("errors", "matches", "blamed"),
    [
        # inception_v3: BatchNorm folding moved the output by 2.6e-4 and later stages barely added to
        # it, but the element-wise check only tipped over at simplify: blame where the error appears.
        (
            {"capture": 0.0, "fx_optimize": 2.6e-4, "convert": 2.7e-4, "simplify": 2.7e-4},
            {"capture": True, "fx_optimize": True, "convert": True, "simplify": False},
            "fx_optimize",
        ),
        (  # a wrong translation: the error jumps at convert
            {"capture": 0.0, "fx_optimize": 1e-7, "convert": 0.8, "simplify": 0.8},
            {"capture": True, "fx_optimize": True, "convert": False, "simplify": False},
            "convert",
        ),
        (  # a broken simplification
            {"capture": 0.0, "fx_optimize": 1e-7, "convert": 2e-7, "simplify": 0.5},
            {"capture": True, "fx_optimize": True, "convert": True, "simplify": False},
            "simplify",
        ),
        ({"capture": 0.0, "convert": 0.0}, {"capture": True, "convert": True}, None),
    ],
)
def test_the_blamed_stage_is_where_the_error_appears(errors: dict, matches: dict, blamed: str | None) -> None:
    from onnxbuild.diagnose import _blamed_stage

    assert _blamed_stage(list(errors), errors, matches) == blamed


def test_a_mismatch_at_rounding_level_says_so() -> None:
    from onnxbuild.stages.validate import rounding_clause

    rounding = {"max_abs": 2.65e-4, "reference_max_abs": 6.13, "dtype": "float32"}
    assert "4.3e-05 of the output's scale" in rounding_clause(rounding)
    assert rounding_clause({**rounding, "max_abs": 0.8}) == ""  # a real mismatch
    assert rounding_clause({**rounding, "dtype": "int64"}) == ""


def test_the_summary_table_never_cuts_set_labels_or_output_names() -> None:
    from onnxbuild.stages.validate import summary_table

    stats = {"passed": True, "max_abs": 1e-7, "max_rel": 1e-6, "p99_abs": 1e-7, "atol": 1e-4, "rtol": 1e-3}
    report = {
        "input_sets": [
            {
                "label": "min/zeros",
                "sizes": {"batch": 1, "sequence": 1},
                "outputs": {"last_hidden_state": stats, "sentence_embedding": stats},
            }
        ]
    }
    header, first, second = summary_table(report)
    assert first.startswith("min/zeros batch=1,sequence=1 last_hidden_state ")
    assert second.split()[:3] == ["min/zeros", "batch=1,sequence=1", "sentence_embedding"]


def test_float32_noise_floor_is_measured_against_float64_eager(tmp_path: Path) -> None:
    from onnxbuild.context import BuildContext
    from onnxbuild.noise import float32_noise, noise_clause

    cfg = compose_config(TINY)
    specs = parse_specs(cfg.input)
    ctx = BuildContext(cfg=cfg, run_dir=tmp_path, specs=specs)
    from onnxbuild.inputs import make_inputs

    values = make_inputs(specs, {"batch": 3}, seed=1)
    with torch.no_grad():
        reference = [ctx.model()(values["input"]).numpy()]
    noise = float32_noise(ctx, values, reference)
    assert noise is not None and 0 < noise < 1e-5  # float32 rounding: real, and tiny for this net
    assert "noise floor" in noise_clause(3e-4, 2e-4) and "noise floor" not in noise_clause(0.8, 2e-4)
    assert noise_clause(0.8, None) == ""


@pytest.mark.parametrize("arch", ["efficientnet_b0", "mobilenet_v3_small", "resnet152", "regnet_x_400mf"])
def test_informative_init_keeps_deep_torchvision_models_well_conditioned(tmp_path: Path, arch: str) -> None:
    # Without damping the residual branches, calibrated efficientnet_b0 differed by 2.6e-4 between
    # float32 and float64 eager runs (resnet152: 7e-4): float32 rounding alone failed atol 1e-4.
    from onnxbuild.context import BuildContext
    from onnxbuild.inputs import make_inputs
    from onnxbuild.noise import float32_noise

    spec = "input.inputs=[{name:input,dtype:float32,shape:[2,3,64,64],dynamic:{0:{name:batch,min:1,max:2}}}]"
    cfg = compose_config(["model=torchvision", f"model.kwargs.arch={arch}", spec])
    specs = parse_specs(cfg.input)
    ctx = BuildContext(cfg=cfg, run_dir=tmp_path, specs=specs)
    values = make_inputs(specs, {"batch": 1}, seed=5)
    with torch.no_grad():
        out = ctx.model()(values["input"])
        other = ctx.model()(make_inputs(specs, {"batch": 1}, seed=6)["input"])
    scale = float(out.abs().max())
    assert 0.01 < scale < 100 and float((out - other).abs().max()) > 1e-3 * scale  # O(1), input-dependent
    assert float32_noise(ctx, values, [out.numpy()]) < 1e-5


@pytest.mark.slow
def test_efficientnet_b0_without_checkpoint_builds_and_validates_informatively(tmp_path: Path) -> None:
    spec = "input.inputs=[{name:input,dtype:float32,shape:[2,3,64,64],dynamic:{0:{name:batch,min:1,max:2}}}]"
    cfg = compose_config(["model=torchvision", "model.kwargs.arch=efficientnet_b0", spec, "cache=off"])
    result = run_build(cfg, tmp_path / "run")
    validation = result.report["validation"]
    assert validation["passed"] and not validation["weak"] and validation["degenerate_outputs"] == []
    assert result.manifest["model_init"]["mode"] == "informative"
    assert any("block.3.1" in name for name in result.manifest["model_init"]["residual_branches_scaled"])


def test_informative_init_leaves_a_factorys_own_trained_weights_alone(tmp_path: Path) -> None:
    # A factory that loads trained weights itself: recalibrating its BatchNorms would export (and
    # validate against) another model; the published ONNX must match the trained one.
    from onnxbuild.zoo import TinyCNN

    torch.manual_seed(3)
    trained = TinyCNN().eval()
    with torch.no_grad():
        for module in trained.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    weights = tmp_path / "trained.pt"
    torch.save(trained.state_dict(), weights)
    custom = ["model=custom", "allowed_target_prefixes=[tests.]", "input=image32", "cache=off"]
    result = run_build(
        compose_config(
            [*custom, "model._target_=tests.models.tiny_from_weights", f"+model.kwargs.weights={weights}"]
        ),
        tmp_path / "loaded",
    )
    assert (
        result.manifest["model_init"]["mode"] == "default"
        and "loads its own" in result.manifest["model_init"]["reason"]
    )
    x = torch.randn(3, 3, 32, 32)
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(
            session.run(None, {"input": x.numpy()})[0], trained(x).numpy(), atol=1e-5, rtol=1e-4
        )
    random = run_build(
        compose_config([*custom, "model._target_=tests.models.random_tiny"]), tmp_path / "random"
    )
    assert random.manifest["model_init"]["mode"] == "informative"  # a seeded init: calibrated as usual


def test_a_nan_reference_is_a_weak_comparison_and_fails_when_informative_is_required(tmp_path: Path) -> None:
    nan = [np.array([1.0, np.nan]), np.array([2.0, 3.0])]
    assert "NaN/Inf in eager PyTorch itself (1 of 4" in weak_reason(nan, [nan], 1e-4, 1e-3)
    base = custom(
        "LogNet", "[{name:x,dtype:float32,shape:[2,8],dynamic:{0:{name:batch,min:1,max:4}}}]", "cache=off"
    )
    result = build(tmp_path, base)
    assert (
        result.report["validation"]["weak"] and "x" not in result.report["validation"]["degenerate_outputs"]
    )
    warning = next(w for w in result.report["warnings"] if "NaN/Inf" in w)
    assert "so eager PyTorch is finite" in warning
    with pytest.raises(ValidationFailed) as info:
        build(tmp_path, [*base, "validation.require_informative=true"])
    assert "NaN/Inf" in info.value.message


def test_an_input_set_eager_pytorch_rejects_names_the_set_and_the_ranges(tmp_path: Path) -> None:
    # high=51 on a 50-row embedding: the example ids fit, the `large` profile's high-1 does not.
    inputs = (
        "[{name:ids,dtype:int64,shape:[2,5],low:0,high:51,dynamic:{0:{name:batch,min:1,max:4}}},"
        "{name:mask,dtype:bool,shape:[2,5],dynamic:{0:{name:batch,min:1,max:4}}}]"
    )
    with pytest.raises(ConfigError) as info:
        build(tmp_path, custom("MaskAndTokens", inputs, "cache=off", "seed=0"))
    assert "eager PyTorch rejects validation input set 'min/large'" in info.value.message
    assert (
        info.value.stage == "validate" and info.value.key == "input.inputs" and "low/high" in info.value.hint
    )
