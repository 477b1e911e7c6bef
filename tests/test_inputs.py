"""Input spec: example sizes avoid 0/1 specialization, validation shape sets, spec errors."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from onnxbuild.errors import ConfigError
from onnxbuild.inputs import export_sizes, make_inputs, parse_specs, validation_shape_sets


def spec(*inputs: dict) -> list:
    return parse_specs(OmegaConf.create({"name": "t", "inputs": list(inputs), "output_names": []}))


def image(batch: int = 2, lo: int = 1, hi: int = 64) -> dict:
    return {
        "name": "x",
        "dtype": "float32",
        "shape": [batch, 3, 8, 8],
        "dynamic": {0: {"name": "batch", "min": lo, "max": hi}},
    }


@pytest.mark.parametrize(
    ("example", "lo", "expected"), [(1, 1, 2), (0, 1, 2), (2, 1, 2), (5, 1, 5), (1, 3, 3)]
)
def test_export_example_is_never_0_or_1(example: int, lo: int, expected: int) -> None:
    assert export_sizes(spec(image(example, lo))) == {"batch": expected}


@pytest.mark.parametrize(
    ("example", "lo", "key", "text"),
    [
        (
            100,
            1,
            "input.inputs[0].shape",
            "example size 100 of dynamic dim 'batch' is outside its range [1, 64]",
        ),
        (2, 0, "input.inputs[0].dynamic.0.min", "has min 0"),
    ],
)
def test_example_outside_the_range_or_an_empty_min_is_refused(
    example: int, lo: int, key: str, text: str
) -> None:
    with pytest.raises(ConfigError) as info:
        spec(image(example, lo))
    assert info.value.key == key and text in info.value.message


@pytest.mark.parametrize(
    ("dtype", "low", "high"), [("int64", 50, 10), ("int64", 5, 5), ("float32", 1.0, -1.0)]
)
def test_an_empty_value_range_is_refused_before_any_work(dtype: str, low: float, high: float) -> None:
    with pytest.raises(ConfigError) as info:
        spec({"name": "ids", "dtype": dtype, "shape": [2, 8], "low": low, "high": high})
    assert info.value.key == "input.inputs[0].low" and "is empty" in info.value.message


def test_dynamic_dim_with_max_below_2_fails_clearly() -> None:
    with pytest.raises(ConfigError) as info:
        spec(image(1, 1, 1))
    assert info.value.key == "input.inputs[0].dynamic.0.max"
    assert "specializes" in info.value.hint


def test_validation_sets_cover_min_max_example_odd() -> None:
    sets = validation_shape_sets(spec(image(2, 1, 64)))
    sizes = {s.label: s.sizes["batch"] for s in sets}
    assert sizes["min"] == 1 and sizes["max"] == 64 and sizes["example"] == 2
    # The smallest odd size no other set uses: unaligned, and cheap next to the max set.
    assert sizes["odd"] == 3
    sizes = {s.label: s.sizes["batch"] for s in validation_shape_sets(spec(image(5, 3, 9)))}
    assert sizes == {"min": 3, "max": 9, "example": 5, "odd": 7}


def test_static_spec_has_one_set() -> None:
    sets = validation_shape_sets(spec({"name": "x", "dtype": "float32", "shape": [1, 3, 8, 8]}))
    assert [s.label for s in sets] == ["static"]


def test_shared_dim_needs_one_range() -> None:
    a = {
        "name": "a",
        "dtype": "int64",
        "shape": [2, 8],
        "dynamic": {0: {"name": "batch", "min": 1, "max": 8}},
    }
    b = {
        "name": "b",
        "dtype": "int64",
        "shape": [2, 8],
        "dynamic": {0: {"name": "batch", "min": 1, "max": 4}},
    }
    with pytest.raises(ConfigError, match="declared with ranges"):
        spec(a, b)


@pytest.mark.parametrize(
    ("bad", "key"),
    [
        ({"name": "x", "dtype": "float99", "shape": [2]}, "input.inputs[0].dtype"),
        (
            {
                "name": "x",
                "dtype": "float32",
                "shape": [2],
                "dynamic": {3: {"name": "b", "min": 1, "max": 4}},
            },
            "input.inputs[0].dynamic.3",
        ),
        (
            {
                "name": "x",
                "dtype": "float32",
                "shape": [2],
                "dynamic": {0: {"name": "b", "min": 5, "max": 4}},
            },
            "input.inputs[0].dynamic.0",
        ),
    ],
)
def test_spec_errors_name_the_key(bad: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        spec(bad)
    assert info.value.key == key


def test_generated_values_respect_dtype_and_range() -> None:
    specs = spec(
        {"name": "ids", "dtype": "int64", "shape": [2, 5], "low": 3, "high": 7},
        {"name": "mask", "dtype": "bool", "shape": [2, 5]},
    )
    values = make_inputs(specs, {}, seed=0)
    assert values["ids"].min() >= 3 and values["ids"].max() < 7
    assert str(values["mask"].dtype) == "torch.bool"
    again = make_inputs(specs, {}, seed=0)
    assert (values["ids"] == again["ids"]).all()


def test_named_sets_can_be_added_from_the_command_line_and_are_checked() -> None:
    from onnxbuild.input_sets import named_sets
    from tests.conftest import TINY, compose_config

    cfg = compose_config([*TINY, "+input.named_sets.positive={input:{low:0.1,high:1.0}}"])
    [positive] = named_sets(parse_specs(cfg.input), cfg.input, seed=0)
    values = positive.arrays["input"]
    assert positive.label == "set:positive" and values.min() >= 0.1 and values.max() <= 1.0
    cfg = compose_config([*TINY, "+input.named_sets.bad={input:{lo:0.1}}"])
    with pytest.raises(ConfigError) as info:
        named_sets(parse_specs(cfg.input), cfg.input, seed=0)
    assert info.value.key == "input.named_sets.bad.input" and "['lo']" in info.value.message


@pytest.mark.parametrize(("lo", "hi", "traced_max"), [(1, 2, 3), (1, 64, 64), (5, 6, 7), (2, 4, 4)])
def test_a_two_value_range_is_traced_wider_so_torch_cannot_bake_it_in(
    lo: int, hi: int, traced_max: int
) -> None:
    from onnxbuild.inputs import DynamicDim, export_max

    assert export_max(DynamicDim(name="batch", min=lo, max=hi)) == traced_max


def test_a_model_that_refuses_the_widened_range_is_traced_at_the_exact_one(tmp_path) -> None:
    from onnxbuild.pipeline import run_build
    from tests.conftest import compose_config

    inputs = "[{name:x,dtype:float32,shape:[2,8],dynamic:{0:{name:batch,min:1,max:2}}}]"
    cfg = compose_config(
        ["model=custom", "model._target_=tests.models.AtMostTwo", "allowed_target_prefixes=[tests.]",
         f"input.inputs={inputs}", "cache=off"]
    )  # fmt: skip
    result = run_build(cfg, tmp_path / "run")
    capture = result.stages[0]["info"]
    assert capture["trace_range"] == "exact" and "Constraints violated" in capture["fallback_errors"][0]
    assert result.report["validation"]["passed"] and result.model_path is not None
