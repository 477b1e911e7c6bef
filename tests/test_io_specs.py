"""Input specs beyond one image: several named inputs, int ranges, keywords, constants, nested outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from omegaconf import OmegaConf

from onnxbuild.errors import ConfigError, ModelError
from onnxbuild.input_sets import padding_mask
from onnxbuild.inputs import make_inputs, parse_specs
from onnxbuild.pipeline import run_build
from tests.conftest import compose_config

BATCH = "0:{name:batch,min:1,max:4}"
SEQ = "1:{name:seq,min:2,max:8}"
MULTI_INPUTS = (
    "input.inputs=["
    f"{{name:image,dtype:float32,shape:[2,3,8,8],dynamic:{{{BATCH}}}}},"
    f"{{name:tokens,dtype:int64,shape:[2,5],low:0,high:50,dynamic:{{{BATCH},{SEQ}}}}},"
    f"{{name:mask,dtype:int64,shape:[2,5],pattern:padding_mask,keyword:true,dynamic:{{{BATCH},{SEQ}}}}},"
    "{name:scale,constant:true,value:0.5}]"
)
X8 = "input.inputs=[{name:x,dtype:float32,shape:[2,8],dynamic:{0:{name:batch,min:1,max:4}}}]"


def custom(model: str, *overrides: str) -> list[str]:
    return [
        "model=custom",
        f"model._target_=tests.extension_models.{model}",
        "allowed_target_prefixes=[tests.]",
        *overrides,
    ]


def test_multi_input_keyword_constant_and_nested_outputs(tmp_path: Path) -> None:
    result = run_build(compose_config(custom("MultiIONet", MULTI_INPUTS)), tmp_path / "run")
    graph = onnx.load(str(result.model_path)).graph
    assert [i.name for i in graph.input] == ["image", "tokens", "mask"]
    assert [o.name for o in graph.output] == ["pooled", "embedded", "pair.0", "pair.1"]
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims["tokens"] == ["batch", "seq"] and dims["mask"] == ["batch", "seq"]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["constants"] == {"scale": 0.5}
    assert manifest["io"] == {
        "inputs": ["image", "tokens", "mask"],
        "outputs": ["pooled", "embedded", "pair.0", "pair.1"],
    }
    assert result.report["validation"]["passed"]

    # The constant is baked in: the graph computes scale=0.5, not the forward's default of 1.0.
    from tests.extension_models import MultiIONet

    torch.manual_seed(0)
    model = MultiIONet().eval()
    image, tokens = torch.randn(3, 3, 8, 8), torch.randint(0, 50, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.int64)
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    pooled = session.run(
        ["pooled"], {"image": image.numpy(), "tokens": tokens.numpy(), "mask": mask.numpy()}
    )[0]
    expected = model(image, tokens, mask=mask, scale=0.5)["pooled"].detach().numpy()
    np.testing.assert_allclose(pooled, expected, atol=1e-5)
    assert not np.allclose(pooled, model(image, tokens, mask=mask)["pooled"].detach().numpy(), atol=1e-3)


def test_dataclass_outputs_become_named_onnx_outputs(tmp_path: Path) -> None:
    result = run_build(compose_config(custom("DataclassNet", X8)), tmp_path / "run")
    assert [o.name for o in onnx.load(str(result.model_path)).graph.output] == ["scores", "boxes"]
    assert result.report["validation"]["passed"]


def test_output_named_like_an_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        run_build(
            compose_config(custom("DataclassNet", X8, "input.output_names=[x,boxes]")), tmp_path / "run"
        )
    assert info.value.key == "input.output_names" and "x" in info.value.message


def test_padding_mask_is_mostly_ones_with_right_padding() -> None:
    mask = padding_mask([6, 10], torch.Generator().manual_seed(0), torch.int64)
    assert mask.dtype == torch.int64 and set(mask.unique().tolist()) <= {0, 1}
    assert mask[0].all()  # the longest sequence sets the padded length
    assert (mask[:, 0] == 1).all()  # every sequence has at least one token
    # right padding: once a row hits 0 it stays 0
    assert (mask[:, 1:] <= mask[:, :-1]).all()
    assert mask.float().mean() > 0.5


def test_key_padding_mask_is_true_where_padded_and_never_a_whole_row() -> None:
    from onnxbuild.inputs import make_tensor

    spec = parse_specs(
        OmegaConf.create(
            {"inputs": [{"name": "kpm", "dtype": "bool", "shape": [5, 9], "pattern": "key_padding_mask"}]}
        )
    )[0]
    for profile in ("normal", "zeros", "large"):
        mask = make_tensor(spec, [5, 9], torch.Generator().manual_seed(0), profile)
        assert mask.dtype == torch.bool and not mask[0].any()  # the first row is unpadded
        assert not mask.all(dim=1).any() and (mask[:, 1:] >= mask[:, :-1]).all()  # right padding


def test_text_seq_preset_generates_ids_in_range_and_a_padding_mask() -> None:
    cfg = compose_config(["input=text_seq"])
    specs = parse_specs(cfg.input)
    assert [s.name for s in specs] == ["input_ids", "attention_mask"] and all(s.keyword for s in specs)
    values = make_inputs(specs, {"batch": 4, "sequence": 12}, seed=0)
    ids, mask = values["input_ids"], values["attention_mask"]
    assert ids.shape == (4, 12) and ids.dtype == torch.int64 and ids.min() >= 0 and ids.max() < 1000
    assert mask[0].all() and (mask[:, 1:] <= mask[:, :-1]).all()


def test_image_dynamic_hw_preset_has_three_dynamic_dims() -> None:
    specs = parse_specs(compose_config(["input=image_dynamic_hw"]).input)
    assert {d.name for d in specs[0].dynamic.values()} == {"batch", "height", "width"}


def test_unknown_pattern_names_the_key() -> None:
    cfg = compose_config(["input=text_seq", "input.inputs.1.pattern=checkerboard"])
    with pytest.raises(ConfigError) as info:
        parse_specs(cfg.input)
    assert info.value.key == "input.inputs[1].pattern"


def test_torchvision_zoo_factory_refuses_unknown_arch_and_downloads() -> None:
    from onnxbuild.torchvision_zoo import build, classification_archs, segmentation_archs

    assert len(classification_archs()) >= 80 and "deeplabv3_resnet50" in segmentation_archs()
    with pytest.raises(ConfigError) as info:  # a config value, like an unknown group option
        build("resnet_nope")
    assert info.value.key == "model.kwargs.arch" and "one of alexnet" in info.value.hint
    with pytest.raises(ModelError):
        build("resnet18", weights="DEFAULT")


def test_torchvision_segmentation_model_builds_offline_with_dict_output() -> None:
    from onnxbuild.models import build_model

    cfg = compose_config(["model=torchvision", "model.kwargs.arch=lraspp_mobilenet_v3_large"])
    assert cfg.model.name == "tv_lraspp_mobilenet_v3_large"
    model = build_model(cfg.model, seed=0)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert list(out) == ["out"] and out["out"].shape == (1, 21, 64, 64)


def test_image_dynamic_hw_builds_with_named_spatial_dims(tmp_path: Path) -> None:
    result = run_build(compose_config(["model=tiny_cnn", "input=image_dynamic_hw"]), tmp_path / "run")
    graph = onnx.load(str(result.model_path)).graph
    assert [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [
        "batch",
        3,
        "height",
        "width",
    ]
    shapes = [s["input_shapes"]["input"] for s in result.report["validation"]["input_sets"]]
    assert [1, 3, 32, 32] in shapes and [8, 3, 256, 256] in shapes
