"""Dynamic-dim overrides on the command line: OmegaConf cannot address the int dim keys itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from onnxbuild.errors import ConfigError
from onnxbuild.overrides import rewrite_dynamic_overrides
from tests.conftest import run_cli

PATH = "input.inputs.0.dynamic"


def test_a_field_override_becomes_a_merging_dict() -> None:
    args = ["model=tiny_cnn", f"{PATH}.0.max=8", f"{PATH}.0.min=2", "opset=17"]
    assert rewrite_dynamic_overrides(args) == [
        "model=tiny_cnn",
        f"++{PATH}={{0:{{max:8,min:2}}}}",
        "opset=17",
    ]


def test_several_dims_and_inputs() -> None:
    args = [f"{PATH}.0.max=4", f"+{PATH}.2={{name:height,min:16,max:64}}", "input.inputs.1.dynamic.0.name=b"]
    assert rewrite_dynamic_overrides(args) == [
        f"++{PATH}={{0:{{max:4}},2:{{name:height,min:16,max:64}}}}",
        "++input.inputs.1.dynamic={0:{name:b}}",
    ]


def test_a_sweep_over_one_field_sweeps_dicts() -> None:
    args = ["-m", f"{PATH}.0.max=8,16,32", f"{PATH}.0.min=2"]
    assert rewrite_dynamic_overrides(args) == [
        "-m",
        f"++{PATH}={{0:{{max:8,min:2}}}},{{0:{{max:16,min:2}}}},{{0:{{max:32,min:2}}}}",
    ]


def test_other_arguments_are_left_alone() -> None:
    args = ["-m", "opset=17,18", "input=image32", "input.inputs.0.dtype=float16", "hydra.run.dir=x.dynamic.0"]
    assert rewrite_dynamic_overrides(args) == args


@pytest.mark.parametrize(
    ("args", "text"),
    [
        ([f"{PATH}.0.max=8,16", f"{PATH}.0.min=1,2"], "more than one dynamic dim field swept"),
        ([f"{PATH}.0.max=range(1,4)"], "takes a value or a comma-separated sweep"),
    ],
)
def test_what_cannot_be_rewritten_is_one_config_error(args: list[str], text: str) -> None:
    with pytest.raises(ConfigError) as info:
        rewrite_dynamic_overrides(args)
    assert text in info.value.message and info.value.key.startswith(PATH)


def test_the_cli_applies_a_dim_override(tmp_path: Path) -> None:
    proc = run_cli(
        ["model=tiny_cnn", "input=image32_dynamic_hw", f"{PATH}.0.max=4", f"{PATH}.2.min=20", "--cfg", "job"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dynamic = yaml.safe_load(proc.stdout)["input"]["inputs"][0]["dynamic"]
    assert dynamic[0] == {"name": "batch", "min": 1, "max": 4}
    assert dynamic[2] == {"name": "height", "min": 20, "max": 64} and dynamic[3]["min"] == 16


def test_the_cli_adds_a_dim_and_checks_its_index(tmp_path: Path) -> None:
    added = run_cli(
        ["model=tiny_cnn", "input=image32", f"{PATH}.2={{name:h,min:16,max:64}}", "--cfg", "job"],
        cwd=tmp_path,
    )
    assert added.returncode == 0, added.stderr[-2000:]
    assert yaml.safe_load(added.stdout)["input"]["inputs"][0]["dynamic"][2] == {
        "name": "h",
        "min": 16,
        "max": 64,
    }
    wrong = run_cli(
        [
            "model=tiny_cnn",
            "input=image32",
            f"{PATH}.5={{name:h,min:1,max:4}}",
            "cache=off",
            f"hydra.run.dir={tmp_path}/r",
        ],
        cwd=tmp_path,
    )
    assert wrong.returncode == 2
    assert "input.inputs[0].dynamic.5: dim 5 is outside shape [2, 3, 32, 32]" in wrong.stderr
