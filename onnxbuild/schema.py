"""Typed schema for every config group, registered in Hydra's ConfigStore.

The defaults list of conf/config.yaml names `build_schema` first, so every key of the composed
config is checked (name and type) before any work starts: a misspelt key fails at compose time.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional  # noqa: UP035 (OmegaConf needs typing generics)

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class DynamicDimConfig:
    """A dynamic dimension: a symbolic name shared across inputs, and its inclusive range."""

    name: str = MISSING
    min: int = 1
    max: int = 64


@dataclass
class InputSpecConfig:
    """One model input: a tensor (shape is the export example) or a constant baked into the graph."""

    name: str = MISSING
    dtype: str = "float32"
    shape: List[int] = field(default_factory=list)
    dynamic: Dict[int, DynamicDimConfig] = field(default_factory=dict)
    # Value range for generated values (integer token ids, masks, bounded floats).
    low: Optional[float] = None
    high: Optional[float] = None
    # Pass by keyword instead of by position.
    keyword: bool = False
    # A non-tensor argument (float, int, bool, str): baked into the graph and recorded in the manifest.
    constant: bool = False
    value: Any = None
    # Structured values instead of uniform random ones: `padding_mask` = per row ones then zeros
    # (an attention mask of right-padded sequences; the first row unpadded).
    pattern: Optional[str] = None


@dataclass
class InputOverrideConfig:
    """Value range of one input inside a named validation set (shapes stay those of the example)."""

    low: Optional[float] = None
    high: Optional[float] = None


@dataclass
class InputConfig:
    name: str = MISSING
    inputs: List[InputSpecConfig] = field(default_factory=list)
    # Optional names for the flattened outputs; default: derived from the output structure.
    output_names: List[str] = field(default_factory=list)
    # Named validation sets on top of the shape sets: set name -> input name -> value overrides
    # (e.g. inputs that make a torch.cond predicate true, and others that make it false).
    named_sets: Dict[str, Dict[str, InputOverrideConfig]] = field(default_factory=dict)
    # Real sentences to validate with, tokenized by model.tokenizer (skipped when it is null).
    sentences: List[str] = field(default_factory=list)


@dataclass
class ModelConfig:
    name: str = MISSING
    _target_: str = MISSING
    # Keyword arguments for the factory named by _target_.
    kwargs: Dict[str, Any] = field(default_factory=dict)
    # Optional weights: .safetensors, or a state_dict .pt/.pth loaded with weights_only=True.
    checkpoint: Optional[str] = None
    # Import-path prefixes a _target_ may come from, on top of the built-in allowlist.
    allowed_prefixes: List[str] = field(default_factory=list)
    # Tokenizer for input.sentences: a local tokenizer directory, or `minilm` (the bundled one).
    tokenizer: Optional[str] = None


@dataclass
class DeviceConfig:
    name: str = "cpu"  # cpu | cuda
    index: int = 0


@dataclass
class FxOptimizationConfig:
    enabled: bool = True
    fold_batchnorm: bool = True
    remove_noops: bool = True
    dead_code_elimination: bool = True


@dataclass
class SimplifyConfig:
    onnxsim: bool = True
    onnxscript_optimizer: bool = True


@dataclass
class OptimizationConfig:
    name: str = MISSING
    fx: FxOptimizationConfig = field(default_factory=FxOptimizationConfig)
    simplify: SimplifyConfig = field(default_factory=SimplifyConfig)


@dataclass
class CaptureConfig:
    # auto: non-strict torch.export, then strict if that fails; or exactly one of them.
    strategy: str = "auto"  # auto | non_strict | strict


@dataclass
class TranslationEntryConfig:
    # torch op: aten::gelu, aten::add.Tensor, mylib::myop, or torch.ops.aten.gelu.default
    op: str = MISSING
    # Import path of the onnxscript function that translates it.
    function: str = MISSING


@dataclass
class TranslationsConfig:
    """torch.onnx.export's custom_translation_table, built from import paths."""

    table: List[TranslationEntryConfig] = field(default_factory=list)
    # Import-path prefixes translation functions may come from, on top of `onnxbuild.`.
    allowed_prefixes: List[str] = field(default_factory=list)


@dataclass
class ValidationConfig:
    enabled: bool = True
    atol: float = 1e-4
    rtol: float = 1e-3
    # Extra shape sets besides min and max of every dynamic dim: the export example and an odd value.
    include_example_shape: bool = True
    include_odd_shape: bool = True


@dataclass
class BuildConfig:
    model: ModelConfig = MISSING
    input: InputConfig = MISSING
    device: DeviceConfig = MISSING
    optimization: OptimizationConfig = MISSING
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    translations: TranslationsConfig = field(default_factory=TranslationsConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    opset: int = 18
    seed: int = 0
    # Extra import-path prefixes allowed for model _target_ (build-wide).
    allowed_target_prefixes: List[str] = field(default_factory=list)


def register() -> None:
    """Register the schema: `build_schema` for the root, `<group>/schema` for each group."""
    cs = ConfigStore.instance()
    cs.store(name="build_schema", node=BuildConfig)
    cs.store(group="model", name="schema", node=ModelConfig)
    cs.store(group="input", name="schema", node=InputConfig)
    cs.store(group="device", name="schema", node=DeviceConfig)
    cs.store(group="optimization", name="schema", node=OptimizationConfig)
