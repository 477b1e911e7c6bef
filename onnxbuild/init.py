"""Model initialisation modes: `informative`, `default`, `checkpoint` (`model.init`).

Without a checkpoint, a model's own initialisation often makes validation meaningless: every
torchvision efficientnet/mobilenet gives a constant ~1e-14 output (anything "passes"), and deep
ResNets reach activations of 1e8+ where float32 rounding alone exceeds any tolerance. The
`informative` mode keeps the seeded default weights but fixes what makes them degenerate:

1. weights that are constant (zero-initialised heads, e.g. vit_b_16) or that shrink their input
   more than ~3x (fan-in gain < 0.3) are redrawn from N(0, 1/fan_in) with the build seed;
2. norm-layer scales initialised to zero (zero-init residuals) are set to one;
3. BatchNorm running statistics are calibrated on seeded inputs shaped like the validation
   inputs, so eval-mode activations stay O(1) and outputs vary with the input;
4. in residual blocks (modules with two or more BatchNorm children, e.g. ResNet's BasicBlock and
   Bottleneck, and torchvision's inverted-residual blocks flagged `use_res_connect` /
   `apply_residual`: MobileNetV2/V3, EfficientNet, MnasNet; RegNet's ResBottleneckBlock) the BatchNorm that ends the branch is
   scaled by RESIDUAL_BRANCH_SCALE after calibration, as trained networks (and zero_init_residual)
   do. Without it a calibrated resnet152 differs by 7e-4 between float32 and float64 eager runs
   (float32 rounding alone fails atol 1e-4), efficientnet_b0 by 2.6e-4; with it by 8e-7 and 3e-7.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from onnxbuild.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from onnxbuild.inputs import InputSpec

INIT_MODES = ("informative", "default", "checkpoint")
# Seed offset of the calibration inputs, so they never coincide with validation inputs.
CALIBRATION_SEED_OFFSET = 10_007
CALIBRATION_BATCHES = 2
# Layers whose weights shrink their input more than this (std * sqrt(fan_in)) are redrawn.
MIN_FAN_IN_GAIN = 0.3
# Scale of the last BatchNorm affine in residual blocks, applied after calibration.
RESIDUAL_BRANCH_SCALE = 0.3


def resolve_init_mode(model_cfg: DictConfig) -> str:
    """The init mode a build uses: explicit `model.init`, else checkpoint if given, else informative."""
    mode = model_cfg.get("init")
    has_ckpt = bool(model_cfg.get("checkpoint"))
    if mode is None:
        return "checkpoint" if has_ckpt else "informative"
    mode = str(mode)
    if mode not in INIT_MODES:
        raise ConfigError(f"unknown init mode '{mode}'", key="model.init", hint=f"one of {list(INIT_MODES)}")
    if mode == "checkpoint" and not has_ckpt:
        raise ConfigError(
            "model.init=checkpoint but no checkpoint is given",
            key="model.init",
            hint="set model.checkpoint=/path/weights.safetensors, or model.init=informative",
        )
    if mode != "checkpoint" and has_ckpt:
        raise ConfigError(
            f"model.init={mode} would ignore model.checkpoint",
            key="model.init",
            hint="drop model.init (a checkpoint implies init=checkpoint) or set model.checkpoint=null",
        )
    return mode


def _fan_in(weight: Any) -> int:
    return int(weight[0].numel()) if weight.dim() >= 2 else int(weight.numel())


def redraw_weak_weights(model: nn.Module, generator: Any) -> list[str]:
    """Redraw constant or strongly shrinking Linear/Conv weights from N(0, 1/fan_in); return their names."""
    import torch
    from torch import nn

    redrawn: list[str] = []
    layer_types = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)
    for module_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, layer_types) or not isinstance(weight, torch.Tensor):
            continue
        if not weight.is_floating_point() or weight.numel() < 2:
            continue
        fan_in = _fan_in(weight)
        std = float(weight.detach().float().std())
        if std > 0 and std * math.sqrt(fan_in) >= MIN_FAN_IN_GAIN:
            continue
        with torch.no_grad():
            fresh = torch.randn(weight.shape, generator=generator) / math.sqrt(fan_in)
            weight.copy_(fresh.to(weight.dtype))
        redrawn.append(f"{module_name}.weight" if module_name else "weight")
    return redrawn


def unzero_norm_scales(model: nn.Module) -> list[str]:
    """Norm layers whose scale is all zero (zero-init residual) silence their branch: set it to one."""
    import torch
    from torch import nn

    norm_types = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
    fixed: list[str] = []
    for module_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, norm_types) and isinstance(weight, torch.Tensor) and not bool(weight.any()):
            with torch.no_grad():
                weight.fill_(1.0)
            fixed.append(f"{module_name}.weight")
    return fixed


def calibrate_batchnorm(
    model: nn.Module, specs: list[InputSpec], seed: int, device: str, batches: int = CALIBRATION_BATCHES
) -> int:
    """Set every BatchNorm's running statistics to those of seeded validation-like inputs.

    Only the BatchNorm layers run in training mode (cumulative average, momentum=None); dropout and
    the rest stay in eval. Returns the number of BatchNorm layers calibrated.
    """
    import torch
    from torch import nn

    from onnxbuild.inputs import export_sizes, make_inputs, split_call

    bns = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not bns:
        return 0
    saved = [(m, m.momentum) for m in bns]
    model.eval()

    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        with torch.no_grad():
            for i in range(batches):
                values = make_inputs(specs, export_sizes(specs), seed=seed + CALIBRATION_SEED_OFFSET + i)
                values = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in values.items()}
                args, kwargs = split_call(specs, values)
                try:
                    model(*args, **kwargs)
                except Exception as exc:
                    shapes = {k: list(v.shape) for k, v in values.items() if isinstance(v, torch.Tensor)}
                    first = next(
                        (ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__
                    )
                    raise ConfigError(
                        f"the model rejects the example inputs {shapes}: {first[:300]}",
                        key="input.inputs",
                        hint="make input shapes/dtypes match what the model's forward expects",
                    ) from exc
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.eval()
    return len(bns)


# torchvision marks its inverted-residual blocks (MobileNetV2/V3, EfficientNet MBConv and
# FusedMBConv, MnasNet) with one of these flags; their BatchNorms sit in nested Sequentials.
RESIDUAL_FLAGS = ("use_res_connect", "apply_residual")


def _residual_blocks(model: nn.Module) -> list[tuple[str, Any]]:
    """(block name, the BatchNorm that ends its residual branch) for every residual block found."""
    from torch import nn

    def is_bn(module: Any) -> bool:
        return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine

    found: list[tuple[str, Any]] = []
    for name, module in model.named_modules():
        # torchvision RegNet's ResBottleneckBlock: x + f(x) (or proj(x) + f(x)), f's BatchNorms nested.
        regnet_block = hasattr(module, "proj") and isinstance(getattr(module, "f", None), nn.Module)
        if regnet_block or any(getattr(module, flag, False) is True for flag in RESIDUAL_FLAGS):
            branch = module.f if regnet_block else module
            bns = [(n, m) for n, m in branch.named_modules() if n and is_bn(m)]
            if regnet_block:
                bns = [(f"f.{n}", m) for n, m in bns]
            if bns:
                found.append((f"{name}.{bns[-1][0]}" if name else bns[-1][0], bns[-1][1]))
            continue
        if isinstance(module, nn.Sequential | nn.ModuleList | nn.ModuleDict):
            continue  # containers chain layers; residual blocks are their own module classes
        bns = [(n, c) for n, c in module.named_children() if is_bn(c)]
        if len(bns) >= 2:  # ResNet's BasicBlock / Bottleneck: the last BatchNorm ends the branch
            found.append((f"{name}.{bns[-1][0]}" if name else bns[-1][0], bns[-1][1]))
    return found


def damp_residual_branches(model: nn.Module) -> list[str]:
    """Scale the BatchNorm that ends every residual branch (each BatchNorm at most once).

    Without it the residual stream grows block after block: a calibrated efficientnet_b0 then
    differs by 2.6e-4 between float32 and float64 eager runs (more than atol 1e-4); damped, by 3e-7.
    """
    import torch

    damped: list[str] = []
    seen: set[int] = set()
    for name, bn in _residual_blocks(model):
        if id(bn) in seen:
            continue
        seen.add(id(bn))
        with torch.no_grad():
            bn.weight.mul_(RESIDUAL_BRANCH_SCALE)
            bn.bias.mul_(RESIDUAL_BRANCH_SCALE)
        damped.append(name)
    return damped


# Factories whose weights are a seeded random init by construction (informative is safe there).
SEEDED_FACTORY_PREFIXES = ("onnxbuild.", "torchvision.models.")


def weights_ignore_the_seed(
    model_cfg: DictConfig, model: nn.Module, seed: int, cfg: DictConfig
) -> str | None:
    """Why informative must not touch this model, or None: its weights do not depend on the seed.

    A factory that loads trained weights itself (no model.checkpoint) gives the same weights
    whatever the seed; recalibrating their BatchNorms would export, and validate, another model.
    Checked by building the model a second time with another seed (custom factories only).
    """
    import torch

    from onnxbuild.models import build_model

    if str(model_cfg._target_).startswith(SEEDED_FACTORY_PREFIXES):
        return None
    first = [t for t in model.state_dict().values() if t.is_floating_point() and t.numel() > 1]
    if not first:
        return None
    other = build_model(model_cfg, seed=seed + 1, extra_prefixes=list(cfg.allowed_target_prefixes))
    second = [t for t in other.state_dict().values() if t.is_floating_point() and t.numel() > 1]
    same = len(first) == len(second) and all(
        a.shape == b.shape and torch.equal(a.cpu(), b.cpu()) for a, b in zip(first, second, strict=True)
    )
    del other
    if not same:
        return None
    return (
        "the factory's weights do not depend on the seed (it loads its own), so they are kept as they are "
        "(model.init=informative would recalibrate them anyway)"
    )


def informative_init(
    model: nn.Module, specs: list[InputSpec], seed: int, device: str = "cpu"
) -> dict[str, Any]:
    """Apply the informative initialisation in place (deterministic for a given seed); describe it."""
    import torch

    generator = torch.Generator().manual_seed(seed + CALIBRATION_SEED_OFFSET)
    redrawn = redraw_weak_weights(model, generator)
    norm_scales = unzero_norm_scales(model)
    calibrated = calibrate_batchnorm(model, specs, seed, device)
    damped = damp_residual_branches(model)
    return {
        "mode": "informative",
        "redrawn_weights": redrawn,
        "norm_scales_set_to_one": norm_scales,
        "batchnorm_calibrated": calibrated,
        "residual_branches_scaled": damped,
        "calibration_batches": CALIBRATION_BATCHES if calibrated else 0,
    }


def apply_init(
    model: nn.Module, mode: str, specs: list[InputSpec], seed: int, device: str = "cpu"
) -> dict[str, Any]:
    """Apply `mode` to a freshly built model (seeded default init, checkpoint already loaded)."""
    if mode == "informative":
        return informative_init(model, specs, seed, device)
    return {"mode": mode}
