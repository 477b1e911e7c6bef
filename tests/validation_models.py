"""Small modules for the validation tests, including the issue's handed cases (tests.validation_models)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RandomAdd(nn.Module):
    """Handed case 1: a sampling op in forward; eager and ONNX can never agree numerically."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn(x.shape)


class NumelOutput(nn.Module):
    """Handed case 2: forward returns a Python int (a SymInt/constant in the exported graph)."""

    def forward(self, x: torch.Tensor) -> int:
        return x.numel()


class GRUNet(nn.Module):
    """Handed case 4a: nn.GRU(1, 32, batch_first=True) in eval."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(1, 32, batch_first=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gru(x)


class MaskedScatter(nn.Module):
    """Handed case 4b: masked_scatter with a (1, 8) bool mask (first 4 True), arange source, times a buffer."""

    def __init__(self) -> None:
        super().__init__()
        mask = torch.zeros(1, 8, dtype=torch.bool)
        mask[0, :4] = True
        self.register_buffer("mask", mask)
        self.register_buffer("source", torch.arange(32, dtype=torch.float32).view(4, 8) + 1)
        self.register_buffer("scale", torch.arange(8, dtype=torch.float32) + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.masked_scatter(self.mask, self.source) * self.scale


class BilinearToOne(nn.Module):
    """Handed case 4c: bilinear interpolate of (1, 3, 10, 10) to size (1, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(1, 1), mode="bilinear", align_corners=False)


class SumWithBias(nn.Module):
    """Handed case 5: a float argument that the input spec declares constant."""

    def forward(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, bias: float = 0.1) -> torch.Tensor:
        return x + y + z + bias


class ZeroHead(nn.Module):
    """Like torchvision vit_b_16's head: zero-initialised, so every output is 0 with default init."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


class TwoOutputs(nn.Module):
    """Two named outputs, for per-output tolerances."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.lin(x)
        return {"logits": y, "probs": torch.softmax(y, -1)}


class MaskAndTokens(nn.Module):
    """A bool mask and integer token ids, to exercise the value profiles of non-float inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 4)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (self.emb(ids) * mask.unsqueeze(-1).float()).sum(1)


class LogNet(nn.Module):
    """log of a linear layer's output: NaN wherever it is negative, on both sides alike."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.linear(x))
