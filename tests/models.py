"""Small models used by the tests (importable as tests.models with allowed_target_prefixes=[tests.])."""

from __future__ import annotations

import torch
from torch import nn


class CallCounterScale(nn.Module):
    """Python-side state baked in at trace time: eager and ONNX disagree on every later call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * float(self.calls)


class NotAModule:
    """A factory that does not return an nn.Module."""


class HardExit(nn.Module):
    """Kills its process when built (like a segfault or the OOM killer): no exception, no status."""

    def __init__(self) -> None:
        import os

        os._exit(9)


class Downloading(torch.nn.Module):
    """Like torchvision's `weights=DEFAULT` offline: the factory fails trying to fetch weights."""

    def __init__(self) -> None:
        super().__init__()
        import urllib.error

        raise urllib.error.URLError("[Errno -2] Name or service not known")


def detector(
    num_classes: int = 3, weights: str | None = None, weights_backbone: str | None = "IMAGENET1K_V1"
) -> nn.Module:
    """Like torchvision's detection factories: the backbone's weights default to a download."""
    if weights is not None or weights_backbone is not None:
        import urllib.error

        raise urllib.error.URLError("[Errno -2] Name or service not known")
    return nn.Linear(8, num_classes)


def tiny_from_weights(weights: str) -> nn.Module:
    """A factory that loads its own trained weights from a path in model.kwargs."""
    from onnxbuild.zoo import TinyCNN

    model = TinyCNN()
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model


def random_tiny() -> nn.Module:
    """A custom factory with a seeded random init (informative applies)."""
    from onnxbuild.zoo import TinyCNN

    return TinyCNN()


class AddTwo(nn.Module):
    """a + b: the two inputs' dims must be one dim."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


def bf16_linear() -> nn.Module:
    """A bfloat16 Linear: onnxruntime's CPU provider has no bfloat16 Gemm/MatMul kernel."""
    return nn.Linear(8, 4).to(torch.bfloat16)


class HalfAttention(nn.Module):
    """float16 self-attention: onnxruntime 1.2x/1.3x crashes (SIGSEGV) building a CPU session for it
    at ORT_ENABLE_ALL on some CPUs (microsoft/onnxruntime#15494)."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x, x, x, need_weights=False)[0]


def half_attention() -> nn.Module:
    return HalfAttention().half()


class Segfaults(nn.Module):
    """Crashes the process in native code, as an onnxruntime or torch bug would."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import ctypes

        ctypes.string_at(0)
        return x


def segfaults() -> nn.Module:
    return Segfaults()


class RunningMean(nn.Module):
    """Updates a buffer in forward (an EMA of its inputs) and uses it: a stateful model."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 4)
        self.register_buffer("ema", torch.zeros(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.ema.mul_(0.9).add_(0.1 * x.mean(0))
        return self.linear(x - self.ema)


class AtMostTwo(nn.Module):
    """Checks its batch against the spec's max (2): the widened trace range [1, 3] is refused."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._check(x.shape[0] <= 2)
        return self.linear(x)


class FloatFromHalf(nn.Module):
    """float16 in, float32 computation and output."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.float())
