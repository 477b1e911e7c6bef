"""Models and onnxscript translations for the registry-extension, control-flow and I/O tests.

Importable as tests.extension_models (allowed with allowed_target_prefixes=[tests.] and
translations.allowed_prefixes=[tests.]).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnxscript
import torch
from onnxscript import FLOAT
from onnxscript import opset18 as op
from torch import nn

MICROSOFT = onnxscript.values.Opset(domain="com.microsoft", version=1)


# --- registry extension ------------------------------------------------------------------------


@torch.library.custom_op("onnxbuild_test::scaled_softsign", mutates_args=())
def scaled_softsign(x: torch.Tensor, scale: float) -> torch.Tensor:
    """A custom op torch.onnx has no translation for: scale * x / (1 + |x|)."""
    return scale * x / (1 + x.abs())


@scaled_softsign.register_fake
def _(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.empty_like(x)


def relu_as_max(self):
    """Override aten::relu (normally ONNX Relu) with Max(x, 0): same numbers, visible in the graph."""
    return op.Max(self, op.CastLike(0.0, self))


# onnx has no schema for onnxruntime's contrib ops: a function using one must be scripted (not traced).
@onnxscript.script(MICROSOFT)
def gelu_contrib(self: FLOAT, approximate: str = "none") -> FLOAT:
    """aten::gelu -> onnxruntime's com.microsoft Gelu contrib op (exact erf form)."""
    return MICROSOFT.Gelu(self)


def scaled_softsign_onnx(x, scale: float):
    """onnxbuild_test::scaled_softsign in standard ONNX ops."""
    s = op.CastLike(scale, x)
    one = op.CastLike(1.0, x)
    return op.Div(op.Mul(s, x), op.Add(one, op.Abs(x)))


class ReluNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


class GeluNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.linear(x))


class SoftsignNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scaled_softsign(self.linear(x), 2.5)


# --- control flow -----------------------------------------------------------------------------


class CondNet(nn.Module):
    """torch.cond on the sign of the input's sum: exports to an ONNX If with both branches."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def positive(x: torch.Tensor) -> torch.Tensor:
            return self.linear(x).sin() * 2

        def negative(x: torch.Tensor) -> torch.Tensor:
            return self.linear(x).cos() - 1

        return torch.cond(x.sum() > 0, positive, negative, (x,))


class PythonIfNet(nn.Module):
    """A data-dependent Python `if`: torch.export cannot capture it (it would bake in one branch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x.sin()
        return x.cos()


# --- inputs and outputs -----------------------------------------------------------------------


class MultiIONet(nn.Module):
    """Two positional inputs (float image, int tokens), a keyword mask, a constant, nested outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(50, 4)
        self.proj = nn.Linear(3, 4)

    def forward(self, image: torch.Tensor, tokens: torch.Tensor, *, mask: torch.Tensor, scale: float = 1.0):
        pooled = self.proj(image.mean(dim=(2, 3))) * scale
        embedded = self.embedding(tokens) * mask.unsqueeze(-1).to(torch.float32)
        summary = embedded.sum(dim=1)
        return {"pooled": pooled, "embedded": embedded, "pair": (pooled + summary, summary.amax(dim=-1))}


@dataclass
class Detections:
    """A plain dataclass output (not a registered pytree): capture registers it."""

    scores: torch.Tensor
    boxes: torch.Tensor


class DataclassNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> Detections:
        y = self.linear(x)
        return Detections(scores=y[:, :2].softmax(-1), boxes=y[:, 2:])
