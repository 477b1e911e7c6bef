"""Every config group option composes and passes the schema; bad keys and types fail at compose time."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from onnxbuild.cli import config_dir
from tests.conftest import compose_config

CONF = Path(config_dir())
GROUPS = ["model", "input", "device", "optimization"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group: str, option: str) -> None:
    cfg = compose_config([f"{group}={option}"])
    assert cfg[group].name
    assert cfg.opset == 18


def test_defaults() -> None:
    cfg = compose_config([])
    assert cfg.model.name == "resnet18"
    assert cfg.input.name == "image224"
    assert cfg.device.name == "cpu"
    assert cfg.optimization.name == "default"
    assert cfg.input.inputs[0].dynamic[0].name == "batch"
    assert (cfg.validation.atol, cfg.validation.rtol) == (None, None)  # by precision
    fp32 = cfg.validation.precision_defaults.float32
    assert (fp32.atol, fp32.rtol) == (1e-4, 1e-3)
    assert cfg.validation.precision_defaults.float16.atol > fp32.atol
    assert cfg.model.init is None  # informative without a checkpoint, checkpoint with one


@pytest.mark.parametrize(
    "override", ["optimization.bogus=1", "model.bogus=1", "validation.atoll=1", "bogus=1"]
)
def test_misspelt_key_fails(override: str) -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose_config([override])
    assert (
        "bogus" in str(info.value.__cause__)
        or "atoll" in str(info.value.__cause__)
        or "bogus" in str(info.value)
    )


@pytest.mark.parametrize(
    "override", ["opset=eighteen", "seed=abc", "validation.atol=tight", "device.index=x"]
)
def test_wrong_type_fails(override: str) -> None:
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_config([override])


def test_yaml_with_unknown_key_fails(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "typo.yaml").write_text("name: typo\n_target_: onnxbuild.zoo.TinyCNN\nkwarg: {}\n")
    with (
        initialize_config_dir(config_dir=config_dir(), version_base="1.3"),
        pytest.raises(ConfigCompositionException),
    ):
        compose(config_name="config", overrides=["model=typo", f"hydra.searchpath=[file://{tmp_path}]"])


def test_a_custom_model_is_named_after_its_factory() -> None:
    cfg = compose_config(["model=custom", "model._target_=tests.models.random_tiny"])
    assert cfg.model.name == "random_tiny"
    assert compose_config(["model=custom", "model._target_=x.y.Net", "model.name=mine"]).model.name == "mine"
