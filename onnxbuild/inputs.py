"""Input spec -> export examples, torch.export dynamic shapes, and validation input sets.

The spec is plain config (names, dtypes, shapes, dynamic dims with ranges); this module is the
only place that turns it into tensors, so capture and validation always agree.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from onnxbuild.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch

FLOAT_DTYPES = {"float32", "float16", "bfloat16", "float64"}
INT_DTYPES = {"int64", "int32", "int16", "int8", "uint8"}
SUPPORTED_DTYPES = FLOAT_DTYPES | INT_DTYPES | {"bool"}
# padding_mask: 1/True = a real token (Hugging Face attention_mask); key_padding_mask: True = padding
# (torch.nn.MultiheadAttention / nn.Transformer*). Both: right padding, the first row unpadded.
PATTERNS = {"padding_mask", "key_padding_mask"}


@dataclass(frozen=True)
class DynamicDim:
    name: str
    min: int
    max: int


@dataclass
class InputSpec:
    name: str
    dtype: str
    shape: list[int]
    dynamic: dict[int, DynamicDim] = field(default_factory=dict)
    low: float | None = None
    high: float | None = None
    keyword: bool = False
    constant: bool = False
    value: Any = None
    pattern: str | None = None


@dataclass
class ShapeSet:
    """One validation shape: a label and the size of every dynamic dim (by dim name)."""

    label: str
    sizes: dict[str, int]


def parse_specs(input_cfg: DictConfig) -> list[InputSpec]:
    """Check the spec's internal consistency; errors name the offending key."""
    raw = OmegaConf.to_container(input_cfg.inputs, resolve=True)
    if not raw:
        raise ConfigError("the input spec lists no inputs", key="input.inputs", hint="add at least one input")
    specs: list[InputSpec] = []
    dims_by_name: dict[str, DynamicDim] = {}
    seen: set[str] = set()
    for i, item in enumerate(raw):
        key = f"input.inputs[{i}]"
        name = item["name"]
        if name in seen:
            raise ConfigError(
                f"duplicate input name '{name}'", key=f"{key}.name", hint="input names must be unique"
            )
        seen.add(name)
        if item.get("constant"):
            specs.append(
                InputSpec(
                    name=name,
                    dtype="constant",
                    shape=[],
                    keyword=True,
                    constant=True,
                    value=item.get("value"),
                )
            )
            continue
        dtype = item["dtype"]
        if dtype not in SUPPORTED_DTYPES:
            raise ConfigError(
                f"unknown dtype '{dtype}'", key=f"{key}.dtype", hint=f"one of {sorted(SUPPORTED_DTYPES)}"
            )
        shape = list(item["shape"])
        if any(s < 0 for s in shape):
            raise ConfigError(
                f"negative size in shape {shape}", key=f"{key}.shape", hint="sizes must be >= 0"
            )
        dynamic: dict[int, DynamicDim] = {}
        for dim_index, dim in (item.get("dynamic") or {}).items():
            dim_index = int(dim_index)
            dkey = f"{key}.dynamic.{dim_index}"
            if not 0 <= dim_index < len(shape):
                raise ConfigError(
                    f"dim {dim_index} is outside shape {shape}",
                    key=dkey,
                    hint="dynamic dims index into `shape`",
                )
            ddim = DynamicDim(name=dim["name"], min=int(dim["min"]), max=int(dim["max"]))
            if ddim.max < ddim.min:
                raise ConfigError(
                    f"invalid range [{ddim.min}, {ddim.max}]", key=dkey, hint="need 1 <= min <= max"
                )
            if ddim.min < 1:
                # Validation runs at min: at size 0 every tensor is empty and nothing is compared.
                raise ConfigError(
                    f"dynamic dim '{ddim.name}' has min {ddim.min}: validation at an empty size compares nothing",
                    key=f"{dkey}.min",
                    hint="use min >= 1",
                )
            example = shape[dim_index]
            if example >= 2 and not ddim.min <= example <= ddim.max:
                raise ConfigError(
                    f"the example size {example} of dynamic dim '{ddim.name}' is outside its range "
                    f"[{ddim.min}, {ddim.max}]",
                    key=f"{key}.shape",
                    hint="put the example inside the range (an example of 1 is moved to max(2, min) for tracing)",
                )
            if ddim.max < 2:
                raise ConfigError(
                    f"dynamic dim '{ddim.name}' has max {ddim.max}: it cannot be traced at a size >= 2",
                    key=f"{dkey}.max",
                    hint="torch.export specializes sizes 0 and 1; raise max to >= 2 or make the dim static",
                )
            previous = dims_by_name.setdefault(ddim.name, ddim)
            if previous != ddim:
                raise ConfigError(
                    f"dynamic dim '{ddim.name}' declared with ranges [{previous.min}, {previous.max}] and "
                    f"[{ddim.min}, {ddim.max}]",
                    key=dkey,
                    hint="a shared dim name must have one range",
                )
            dynamic[dim_index] = ddim
        low, high = item.get("low"), item.get("high")
        if low is not None and high is not None and not float(low) < float(high):
            raise ConfigError(
                f"value range low={low}, high={high} is empty",
                key=f"{key}.low",
                hint="need low < high (integers are drawn from [low, high), floats uniform in [low, high))",
            )
        specs.append(
            InputSpec(
                name=name,
                dtype=dtype,
                shape=shape,
                dynamic=dynamic,
                low=item.get("low"),
                high=item.get("high"),
                keyword=bool(item.get("keyword")),
                pattern=_check_pattern(item.get("pattern"), f"{key}.pattern"),
            )
        )
    return specs


def _check_pattern(pattern: str | None, key: str) -> str | None:
    if pattern is not None and pattern not in PATTERNS:
        raise ConfigError(
            f"unknown value pattern '{pattern}'", key=key, hint=f"one of {sorted(PATTERNS)} or null"
        )
    return pattern


def dynamic_dims(specs: list[InputSpec]) -> dict[str, DynamicDim]:
    dims: dict[str, DynamicDim] = {}
    for spec in specs:
        for ddim in spec.dynamic.values():
            dims.setdefault(ddim.name, ddim)
    return dims


def export_sizes(specs: list[InputSpec]) -> dict[str, int]:
    """The size each dynamic dim is traced at: the spec's example, moved to >= 2 if needed.

    Tracing a dynamic dim at 0 or 1 makes torch.export specialize it (0/1 specialization), so an
    example of 1 (common for batch) is replaced by max(2, min), which is always inside the range.
    """
    sizes: dict[str, int] = {}
    for spec in specs:
        for dim_index, ddim in spec.dynamic.items():
            if ddim.name in sizes:
                continue
            example = spec.shape[dim_index]
            if example < 2 or not ddim.min <= example <= ddim.max:
                example = max(2, ddim.min)
            sizes[ddim.name] = example
    return sizes


def concrete_shape(spec: InputSpec, sizes: dict[str, int]) -> list[int]:
    shape = list(spec.shape)
    for dim_index, ddim in spec.dynamic.items():
        shape[dim_index] = sizes[ddim.name]
    return shape


def _odd_size(ddim: DynamicDim, avoid: set[int]) -> int | None:
    """The smallest odd size strictly inside (min, max) that no other set uses, if there is one.

    An odd size catches what aligned sizes hide (a stride, a reshape baked to the example); the
    max set already covers the top of the range, so the odd set stays small: it costs a run of
    the eager model and of onnxruntime, and at batch 31 of 224x224 images that was seconds.
    """
    for value in range(ddim.min + 1, ddim.max):
        if value % 2 == 1 and value not in avoid:
            return value
    return None


def validation_shape_sets(
    specs: list[InputSpec], include_example: bool = True, include_odd: bool = True
) -> list[ShapeSet]:
    """min and max of every dynamic dim (together), the export example, and one odd in-between size.

    Dims move together rather than as a cartesian product: 4 sets cover the boundaries and an
    unaligned size without an explosion in the number of runs.
    """
    dims = dynamic_dims(specs)
    if not dims:
        return [ShapeSet("static", {})]
    sets = [
        ShapeSet("min", {n: d.min for n, d in dims.items()}),
        ShapeSet("max", {n: d.max for n, d in dims.items()}),
    ]
    if include_example:
        sets.append(ShapeSet("example", export_sizes(specs)))
    if include_odd:
        odd: dict[str, int] = {}
        for n, d in dims.items():
            value = _odd_size(d, {s.sizes[n] for s in sets})
            odd[n] = value if value is not None else export_sizes(specs)[n]
        sets.append(ShapeSet("odd", odd))
    unique: list[ShapeSet] = []
    for s in sets:
        if all(s.sizes != u.sizes for u in unique):
            unique.append(s)
    return unique


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return getattr(torch, name)


PROFILES = ("normal", "zeros", "large")
EDGE_PROFILES = ("zeros", "large")


def make_tensor(
    spec: InputSpec,
    shape: list[int],
    generator: torch.Generator,
    profile: str = "normal",
    large: float = 10.0,
) -> torch.Tensor:
    """Seeded values that respect the dtype and the declared range, for one value profile.

    normal: random values (floats N(0,1) or uniform in [low, high); ints uniform in [low, high);
    random bool masks). zeros: zeros (or `low` when 0 is outside the range), all-False, integer low.
    large: large magnitudes (N(0,1) * large, or the range's ends), all-True, integer high - 1.
    """
    import torch

    dtype = torch_dtype(spec.dtype)
    if spec.pattern in PATTERNS:
        from onnxbuild.input_sets import padding_mask

        keep = padding_mask(shape, generator, dtype)
        return keep if spec.pattern == "padding_mask" else (keep == 0).to(dtype)
    if spec.dtype == "bool":
        if profile == "zeros":
            return torch.zeros(shape, dtype=torch.bool)
        if profile == "large":
            return torch.ones(shape, dtype=torch.bool)
        return torch.rand(shape, generator=generator) > 0.5
    if spec.dtype in INT_DTYPES:
        low = int(spec.low) if spec.low is not None else 0
        high = int(spec.high) if spec.high is not None else 100
        if profile == "zeros":
            return torch.full(shape, low, dtype=dtype)
        if profile == "large":
            return torch.full(shape, max(low, high - 1), dtype=dtype)
        return torch.randint(low, high, shape, generator=generator, dtype=dtype)
    bounded = spec.low is not None or spec.high is not None
    low = float(spec.low if spec.low is not None else 0.0)
    high = float(spec.high if spec.high is not None else 1.0)
    if profile == "zeros":
        value = 0.0 if not bounded or low <= 0.0 <= high else low
        return torch.full(shape, value, dtype=dtype)
    if profile == "large":
        if bounded:
            ends = torch.rand(shape, generator=generator) > 0.5
            return torch.where(ends, torch.tensor(high), torch.tensor(low)).to(dtype)
        return (torch.randn(shape, generator=generator) * large).to(dtype)
    if bounded:
        return (torch.rand(shape, generator=generator) * (high - low) + low).to(dtype)
    return torch.randn(shape, generator=generator).to(dtype)


def make_inputs(
    specs: list[InputSpec], sizes: dict[str, int], seed: int, profile: str = "normal", large: float = 10.0
) -> dict[str, Any]:
    """Tensors for every tensor input (by spec name) plus the constant values, in spec order."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    values: dict[str, Any] = {}
    for spec in specs:
        if spec.constant:
            values[spec.name] = spec.value
        else:
            values[spec.name] = make_tensor(spec, concrete_shape(spec, sizes), generator, profile, large)
    return values


@dataclass
class InputSet:
    """One validation run: generated (profile at a shape, seeded) or a user sample used as-is."""

    label: str
    profile: str
    sizes: dict[str, int]
    seed: int | None = None
    sample: str | None = None
    arrays: dict[str, Any] | None = None

    def values(self, specs: list[InputSpec], large: float = 10.0) -> dict[str, Any]:
        if self.arrays is not None:
            import torch

            values: dict[str, Any] = {s.name: s.value for s in specs if s.constant}
            values.update({k: torch.from_numpy(v.copy()) for k, v in self.arrays.items()})
            return {s.name: values[s.name] for s in specs}
        return make_inputs(specs, self.sizes, seed=int(self.seed or 0), profile=self.profile, large=large)


def _numel(specs: list[InputSpec], sizes: dict[str, int]) -> int:
    total = 0
    for spec in specs:
        if not spec.constant:
            n = 1
            for d in concrete_shape(spec, sizes):
                n *= d
            total += n
    return total


def validation_input_sets(
    specs: list[InputSpec],
    seed: int,
    profiles: list[str],
    include_example: bool = True,
    include_odd: bool = True,
    edge_at_every_shape: bool = False,
    samples: str | None = None,
) -> list[InputSet]:
    """Shapes x value profiles, without a cartesian explosion, plus the user's samples.

    `normal` runs at every shape set; the edge profiles (zeros, large) only at the smallest shape
    (the cheapest run for big models) unless `edge_at_every_shape`. Each set has its own seed.
    """
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown:
        raise ConfigError(
            f"unknown value profile(s) {unknown}",
            key="validation.profiles",
            hint=f"choose from {list(PROFILES)}",
        )
    shapes = validation_shape_sets(specs, include_example, include_odd)
    smallest = min(shapes, key=lambda s: _numel(specs, s.sizes))
    sets: list[InputSet] = []
    for shape_set in shapes:
        for profile in profiles:
            if profile != "normal" and not edge_at_every_shape and shape_set is not smallest:
                continue
            label = shape_set.label if profile == "normal" else f"{shape_set.label}/{profile}"
            sets.append(InputSet(label, profile, dict(shape_set.sizes), seed=seed + len(sets)))
    if samples:
        sets.extend(load_samples(specs, samples))
    if not sets:
        raise ConfigError(
            "validation has no input sets",
            key="validation.profiles",
            hint="keep `normal` or give validation.samples",
        )
    return sets


def load_samples(specs: list[InputSpec], path_text: str) -> list[InputSet]:
    """User samples from an .npz file (arrays keyed by input name) or a directory of .npz files."""
    from pathlib import Path

    import numpy as np

    key = "validation.samples"
    path = Path(path_text).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise ConfigError(
                f"no .npz files in {path}", key=key, hint="give an .npz file or a folder of them"
            )
    elif path.is_file() and path.suffix == ".npz":
        files = [path]
    else:
        raise ConfigError(
            f"samples not found or not .npz: {path}", key=key, hint="give an .npz file or a folder of them"
        )
    tensor_specs = [s for s in specs if not s.constant]
    sets: list[InputSet] = []
    for file in files:
        with np.load(file, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        missing = [s.name for s in tensor_specs if s.name not in arrays]
        extra = sorted(set(arrays) - {s.name for s in tensor_specs})
        if missing or extra:
            raise ConfigError(
                f"sample {file.name} has arrays {sorted(arrays)}; missing {missing}, unknown {extra}",
                key=key,
                hint=f"one array per tensor input, named {[s.name for s in tensor_specs]}",
            )
        sizes: dict[str, int] = {}
        for spec in tensor_specs:
            array = arrays[spec.name]
            if spec.dtype != "bfloat16" and str(array.dtype) != spec.dtype:
                raise ConfigError(
                    f"sample {file.name}: '{spec.name}' is {array.dtype}, the spec says {spec.dtype}",
                    key=key,
                    hint="save the array with the input's dtype (samples are used as-is)",
                )
            ok = array.ndim == len(spec.shape)
            for i, size in enumerate(array.shape if ok else ()):
                ddim = spec.dynamic.get(i)
                if ddim is None:
                    ok = ok and size == spec.shape[i]
                else:
                    ok = ok and ddim.min <= size <= ddim.max
                    sizes[ddim.name] = size
            if not ok:
                raise ConfigError(
                    f"sample {file.name}: '{spec.name}' has shape {list(array.shape)}, which the spec "
                    f"{spec.shape} (dynamic {[(i, d.min, d.max) for i, d in spec.dynamic.items()]}) does not allow",
                    key=key,
                    hint="static dims must match the spec; dynamic dims must lie in their range",
                )
        sets.append(InputSet(f"sample:{file.stem}", "sample", sizes, sample=file.name, arrays=arrays))
    return sets


def split_call(specs: list[InputSpec], values: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) for model(*args, **kwargs): positional in spec order, keyword/constant by name."""
    args = tuple(values[s.name] for s in specs if not (s.keyword or s.constant))
    kwargs = {s.name: values[s.name] for s in specs if s.keyword or s.constant}
    return args, kwargs


def export_max(ddim: DynamicDim) -> int:
    """The upper bound torch.export is given: the spec's max, widened to leave three values.

    torch records size guards such as `size > 1` while it re-traces (the exporter's decompositions);
    on a range of two values, [1, 2], that leaves one, and torch bakes the size into the graph
    (swin_b and convnext_base at batch 1..2 came out with batch 2 in every Reshape). A range the
    graph is traced for may be wider than the one it is validated on; validation still runs at
    the spec's min and max.
    """
    return max(ddim.max, ddim.min + 2)


def widened_dims(specs: list[InputSpec]) -> list[str]:
    """Dynamic dims whose trace range export_max widens past the spec's max."""
    return [n for n, d in dynamic_dims(specs).items() if export_max(d) != d.max]


def export_dynamic_shapes(
    model: torch.nn.Module, specs: list[InputSpec], args: tuple, kwargs: dict, widen: bool = True
) -> dict[str, Any] | None:
    """torch.export `dynamic_shapes`, keyed by the forward's parameter names (trace ranges widened by
    export_max unless `widen` is false)."""
    from torch.export import Dim

    if not dynamic_dims(specs):
        return None
    dim_objects = {
        n: Dim(n, min=d.min, max=export_max(d) if widen else d.max) for n, d in dynamic_dims(specs).items()
    }
    spec_by_name = {s.name: s for s in specs}
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"the input spec does not fit {type(model).__name__}.forward: {exc}",
            key="input.inputs",
            hint="match the number and names of the forward's arguments",
        ) from exc
    positional = [s for s in specs if not (s.keyword or s.constant)]
    shapes: dict[str, Any] = {}
    for index, (param, _value) in enumerate(bound.arguments.items()):
        spec = positional[index] if index < len(positional) else spec_by_name.get(param)
        if spec is None or spec.constant or not spec.dynamic:
            shapes[param] = None
        else:
            shapes[param] = {i: dim_objects[d.name] for i, d in spec.dynamic.items()}
    return shapes


def to_numpy_feed(specs: list[InputSpec], values: dict[str, Any]) -> dict[str, np.ndarray]:
    """onnxruntime feed: tensor inputs by name (constants are baked into the graph)."""
    return {s.name: values[s.name].detach().cpu().numpy() for s in specs if not s.constant}
