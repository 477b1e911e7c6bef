"""Every torchvision classification and segmentation model behind one allowlisted factory.

`model=torchvision model.kwargs.arch=efficientnet_b0` builds any of them with seeded weights: no
weights are downloaded (pretrained backbones of segmentation models are switched off too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onnxbuild.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from torch import nn

# Image sizes the architectures need (fixed position embeddings, window partitions, deep stems);
# every other model accepts small images, which keeps zoo-wide builds fast.
NATURAL_RESOLUTION: dict[str, int] = {
    "vit_b_16": 224,
    "vit_b_32": 224,
    "vit_l_16": 224,
    "vit_l_32": 224,
    "vit_h_14": 224,
    "maxvit_t": 224,
    "inception_v3": 299,
}


def classification_archs() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def segmentation_archs() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm.segmentation))


def num_params(arch: str) -> int | None:
    """Parameter count from torchvision's weight metadata (no download, no instantiation)."""
    import torchvision.models as tvm

    try:
        weights = list(tvm.get_model_weights(arch))
    except (ValueError, KeyError):
        return None
    return int(weights[0].meta["num_params"]) if weights else None


def build(arch: str, **kwargs: Any) -> nn.Module:
    """torchvision.models.get_model(arch) with seeded weights (never downloads)."""
    import torchvision.models as tvm

    known = set(classification_archs()) | set(segmentation_archs())
    if arch not in known:
        elsewhere = next(
            (f"torchvision.models.{sub}.{arch}" for sub in ("video", "detection", "optical_flow", "quantization")
             if callable(getattr(getattr(tvm, sub, None), arch, None))),
            None,
        )  # fmt: skip
        hint = (
            f"build it as a custom model: model=custom model._target_={elsewhere} (and an input spec for it)"
            if elsewhere
            else f"one of {', '.join(sorted(known))}"
        )
        raise ConfigError(
            f"'{arch}' is not a torchvision classification or segmentation model",
            key="model.kwargs.arch",
            hint=hint,
        )
    kwargs.setdefault("weights", None)
    if kwargs["weights"] is not None:
        raise ModelError(
            "pretrained torchvision weights would be downloaded",
            key="model.kwargs.weights",
            hint="keep weights: null and give model.checkpoint for trained weights",
        )
    if arch in segmentation_archs():
        kwargs.setdefault("weights_backbone", None)
    if arch in ("inception_v3", "googlenet"):
        # Auxiliary heads only run in training mode; init_weights avoids a scipy-free warning path.
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    return tvm.get_model(arch, **kwargs)
