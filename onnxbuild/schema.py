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
    # (an attention mask of right-padded sequences; the first row unpadded); `key_padding_mask` =
    # its inverse (True = padding, torch.nn.MultiheadAttention's convention).
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
    # Untyped values, like validation.outputs: OmegaConf cannot add a new key holding a dict of
    # dataclasses from the command line (+input.named_sets.pos={x:{low:0.1}}); the keys of each
    # override ({low, high}: InputOverrideConfig) are checked when the sets are made.
    named_sets: Dict[str, Any] = field(default_factory=dict)
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
    # Weights: informative | default | checkpoint; null = checkpoint when one is given, else informative
    # (seeded init made non-degenerate: BatchNorm statistics calibrated, dead layers redrawn).
    init: Optional[str] = None
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
class ToleranceConfig:
    atol: Optional[float] = None
    rtol: Optional[float] = None


def _precision_tolerances() -> Dict[str, ToleranceConfig]:
    return {
        "float64": ToleranceConfig(atol=1e-7, rtol=1e-6),
        "float32": ToleranceConfig(atol=1e-4, rtol=1e-3),
        "float16": ToleranceConfig(atol=1e-2, rtol=1e-2),
        "bfloat16": ToleranceConfig(atol=5e-2, rtol=5e-2),
    }


@dataclass
class ValidationConfig:
    enabled: bool = True
    # Tolerances for every output; null = the default of the output's precision (precision_defaults).
    atol: Optional[float] = None
    rtol: Optional[float] = None
    # Defaults by precision: the lowest float precision among the model's weights and the output
    # itself (not the inputs: eager and onnxruntime get the same input values). Integer and bool outputs are compared exactly unless overridden.
    precision_defaults: Dict[str, ToleranceConfig] = field(default_factory=_precision_tolerances)
    # Per output name: {logits: {atol: 1e-3, rtol: 1e-2}}; wins over atol/rtol and precision_defaults.
    # (Untyped values: Hydra cannot add new keys to a Dict of dataclasses from the command line;
    # validate checks that only atol/rtol are given.)
    outputs: Dict[str, Any] = field(default_factory=dict)
    # Extra shape sets besides min and max of every dynamic dim: the export example and an odd value.
    include_example_shape: bool = True
    include_odd_shape: bool = True
    # Value profiles: normal (random values in range) at every shape; edge profiles zeros (zeros,
    # all-False, integer low) and large (large magnitudes, all-True, integer high) at the smallest
    # shape only, unless edge_profiles_at_every_shape.
    profiles: List[str] = field(default_factory=lambda: ["normal", "zeros", "large"])
    edge_profiles_at_every_shape: bool = False
    # Edge profiles push weights far from their calibrated range, where float32 rounding alone can
    # differ widely between runtimes: their numeric mismatches warn; shape, dtype and NaN/Inf
    # mismatches always fail. true makes numeric mismatches on edge profiles fail too.
    strict_edge_profiles: bool = False
    # Scale of the `large` profile for float inputs without a declared low/high.
    large_magnitude: float = 10.0
    # User samples used as-is: an .npz file (arrays keyed by input name) or a directory of them.
    samples: Optional[str] = None
    # A degenerate reference (constant or ~zero output) is a warning; true makes it a failure.
    require_informative: bool = False
    # Random ops in the graph (RandomNormal, Bernoulli...): warn (outputs they feed are not compared) | fail.
    random_ops: str = "warn"
    # On a mismatch, localize the first diverging node (runs the graph with every value exposed).
    diagnose: bool = True


@dataclass
class CacheConfig:
    """The content-addressed stage cache (onnxbuild/cache.py); `cache=off` disables it."""

    name: str = "on"
    enabled: bool = True
    root: str = "outputs/.cache"
    # After a build that stored new entries, least recently used ones go until the cache fits
    # (e.g. 20G; null: no limit). A 90-model coverage run leaves some 60 GB otherwise.
    max_size: Optional[str] = "20G"


@dataclass
class ReleaseConfig:
    """Release bundle (`+release=default`): release/<model>-opset<N>-<shorthash>/ after a passing build."""

    enabled: bool = False
    root: str = "release"


@dataclass
class BenchmarkConfig:
    """Optional latency measurement of the validated model (onnxbuild/stages/benchmark.py)."""

    enabled: bool = False
    # Shape sets to time: example (the export example), min, max, odd (as in validation).
    shapes: List[str] = field(default_factory=lambda: ["example", "max"])
    warmup: int = 5
    iterations: int = 30
    # onnxruntime intra-op threads; null: onnxruntime's default (all cores).
    threads: Optional[int] = None
    # Also time eager PyTorch on the same inputs (speed-up figure).
    eager: bool = True


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
    cache: CacheConfig = field(default_factory=CacheConfig)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    # torch.use_deterministic_algorithms(True) for every stage that runs torch.
    deterministic: bool = False


def target_name(target: str) -> str:
    """`mypkg.nets.build_net` -> `build_net`: a readable model name for run dirs and bundles."""
    name = str(target).rpartition(".")[2]
    return name if name and name != "???" else "custom"


def register() -> None:
    """Register the schema: `build_schema` for the root, `<group>/schema` for each group."""
    from omegaconf import OmegaConf

    # conf/model/custom.yaml names the model after its factory (`name: ${onnxbuild_target_name:...}`).
    OmegaConf.register_new_resolver("onnxbuild_target_name", target_name, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="build_schema", node=BuildConfig)
    cs.store(group="model", name="schema", node=ModelConfig)
    cs.store(group="input", name="schema", node=InputConfig)
    cs.store(group="device", name="schema", node=DeviceConfig)
    cs.store(group="optimization", name="schema", node=OptimizationConfig)
    cs.store(group="cache", name="schema", node=CacheConfig)
