"""Model factory: allowlisted `_target_` import, seeded construction, safe checkpoint loading."""

from __future__ import annotations

import importlib
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from onnxbuild.errors import BuildError, ModelError, plain_text

if TYPE_CHECKING:
    from torch import nn

# Factories users may name without extra configuration.
BUILTIN_ALLOWED_PREFIXES: tuple[str, ...] = ("torchvision.models.", "onnxbuild.")


def allowed_prefixes(model_cfg: DictConfig, extra: list[str] | None = None) -> list[str]:
    return [*BUILTIN_ALLOWED_PREFIXES, *list(model_cfg.get("allowed_prefixes") or []), *(extra or [])]


def resolve_target(target: str, prefixes: list[str]) -> Any:
    """Import the factory named by `target` if it is inside the allowlist."""
    if not target or target == "???":
        raise ModelError(
            "no factory given", key="model._target_", hint="set model._target_=package.module.factory"
        )
    if not any(target.startswith(p) for p in prefixes):
        raise ModelError(
            f"'{target}' is outside the allowlist {prefixes}",
            key="model._target_",
            hint=f"add its package to model.allowed_prefixes, e.g. model.allowed_prefixes=[{target.split('.')[0]}.]",
        )
    module_name, _, attr = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        factory = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(
            f"cannot import '{target}': {exc}",
            key="model._target_",
            hint="check the spelling and that the package is installed in this environment",
        ) from exc
    check_origin(factory, target, prefixes, "model._target_")
    return factory


def check_origin(obj: Any, target: str, prefixes: list[str], key: str) -> None:
    """The object must be *defined* inside the allowlist, not merely imported into an allowed module.

    Without this, `allowedpkg.module.system` (after `from os import system` there) would pass the
    prefix check and run os.system.
    """
    if isinstance(obj, types.ModuleType):
        raise ModelError(f"'{target}' is a module, not a factory", key=key, hint="name a function or class")
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "")
    if not isinstance(module, str):
        return  # objects without a defining module (instances, builtins' attributes) are called as-is
    origin = f"{module}.{qualname}"
    if not any(origin.startswith(p) or f"{module}.".startswith(p) for p in prefixes):
        raise ModelError(
            f"'{target}' is {origin}, defined outside the allowlist {prefixes}",
            key=key,
            hint="name the factory where it is defined, inside an allowed package",
        )


def _is_download_failure(exc: BaseException) -> bool:
    import socket
    import urllib.error

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, urllib.error.URLError | socket.gaierror | ConnectionError | TimeoutError):
            return True
        if "urlopen" in str(seen) or "huggingface.co" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def check_checkpoint(model_cfg: DictConfig) -> Path | None:
    """Fail early (before any work) when a configured checkpoint does not exist."""
    ckpt = model_cfg.get("checkpoint")
    if not ckpt:
        return None
    path = Path(str(ckpt)).expanduser()
    if path.is_dir():
        raise ModelError(
            f"checkpoint {path} is a directory, not a file",
            key="model.checkpoint",
            hint="name the .safetensors or .pt file itself (a Hugging Face model directory goes in model=hf)",
        )
    if not path.is_file():
        raise ModelError(
            f"checkpoint file not found: {path}",
            key="model.checkpoint",
            hint="give an existing .safetensors or state_dict .pt file, or model.checkpoint=null",
        )
    if path.suffix not in (".safetensors", ".pt", ".pth", ".bin"):
        raise ModelError(
            f"unsupported checkpoint format '{path.suffix}'",
            key="model.checkpoint",
            hint="use .safetensors or a state_dict saved with torch.save (.pt/.pth)",
        )
    return path


def load_state_dict(path: Path) -> dict[str, Any]:
    """Load weights without executing pickled code (safetensors, or torch.load weights_only)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError, OSError: a truncated or foreign file
            raise ModelError(
                f"cannot read {path.name} as safetensors: {plain_text(exc)}",
                key="model.checkpoint",
                hint="the file is corrupt or not safetensors; re-save it with safetensors.torch.save_file",
            ) from exc
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors are many types; all mean "not a plain state_dict"
        unsafe = "weights only load failed" in str(exc).lower()
        reason = (
            "it holds pickled Python objects besides tensors (e.g. a whole model), which are never unpickled"
            if unsafe
            else plain_text(exc)
        )
        raise ModelError(
            f"cannot load {path.name} with weights_only=True: {reason}",
            key="model.checkpoint",
            hint="save a plain state_dict (torch.save(model.state_dict(), path)) or use safetensors",
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(
            f"{path.name} holds a {type(state).__name__}, not a state_dict",
            key="model.checkpoint",
            hint="save model.state_dict(), not the whole model",
        )
    return state


def _checkpoint_hint(saved: set[str], expected: set[str]) -> str:
    """Say so when the checkpoint's keys are the model's under a prefix (DDP's `module.`, a Lightning
    module's `model.`): the fix is to strip it when saving, not another architecture."""
    generic = "the checkpoint must come from the same architecture and model.kwargs"
    prefixes = {key.split(".", 1)[0] + "." for key in saved if "." in key}
    if len(prefixes) == 1:
        prefix = prefixes.pop()
        if {key.removeprefix(prefix) for key in saved} == expected:
            return (
                f"every checkpoint key carries the prefix '{prefix}' (a DistributedDataParallel or wrapper "
                f"module's state_dict); save the inner module's state_dict, or strip '{prefix}' from the keys"
            )
    return generic


def _download_hint(factory: Any, kwargs: dict[str, Any]) -> str:
    """Name the factory's weight arguments left at their (downloading) defaults, e.g. torchvision
    detection models' `weights_backbone`, which defaults to ImageNet weights."""
    import inspect

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    unset = [
        name
        for name, param in params.items()
        if ("weights" in name or "pretrained" in name)
        and name not in kwargs
        and param.default not in (None, False, inspect.Parameter.empty)
    ]
    fix = ", ".join(f"+model.kwargs.{p}={'false' if 'pretrained' in p else 'null'}" for p in unset)
    return (
        "the factory tried to download weights, and builds never download: "
        + (f"set {fix} (left at a default that downloads), and " if fix else "")
        + "give trained weights as model.checkpoint (safetensors or a state_dict)"
    )


def build_model(model_cfg: DictConfig, seed: int, extra_prefixes: list[str] | None = None) -> nn.Module:
    """Create the model in eval mode: seeded init, then the checkpoint if one is configured."""
    import torch

    factory = resolve_target(str(model_cfg._target_), allowed_prefixes(model_cfg, extra_prefixes))
    kwargs = OmegaConf.to_container(model_cfg.kwargs, resolve=True) if model_cfg.get("kwargs") else {}
    torch.manual_seed(seed)
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ModelError(
            f"'{model_cfg._target_}' rejected its arguments: {exc}",
            key="model.kwargs",
            hint="check model.kwargs against the factory's signature",
        ) from exc
    except BuildError:
        raise
    except Exception as exc:
        downloading = _is_download_failure(exc)
        raise ModelError(
            f"'{model_cfg._target_}' failed to build the model: {type(exc).__name__}: {plain_text(exc)}",
            key="model.kwargs" if downloading else "model._target_",
            hint=(
                _download_hint(factory, kwargs)
                if downloading
                else "run the factory by hand to see the full error (or HYDRA_FULL_ERROR=1)"
            ),
        ) from exc
    if not isinstance(model, torch.nn.Module):
        raise ModelError(
            f"'{model_cfg._target_}' returned {type(model).__name__}, not a torch.nn.Module",
            key="model._target_",
            hint="point _target_ at a function or class that builds an nn.Module",
        )
    ckpt = check_checkpoint(model_cfg)
    if ckpt is not None:
        state = load_state_dict(ckpt)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelError(
                f"checkpoint {ckpt.name} does not fit the model: {plain_text(exc, limit=400)}",
                key="model.checkpoint",
                hint=_checkpoint_hint(set(state), set(model.state_dict())),
            ) from exc
    return model.eval()
