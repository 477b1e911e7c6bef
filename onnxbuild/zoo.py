"""Small models shipped with onnxbuild, for fast builds, tests and examples."""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """conv+bn+relu x2, global pooling, dropout, linear: exercises BN folding and no-op removal."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width * 2, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(width * 2),
            nn.ReLU(),
            nn.Identity(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(width * 2, num_classes)
        self._randomize_batchnorm()

    def _randomize_batchnorm(self) -> None:
        # Non-trivial running statistics, so that BatchNorm folding changes real numbers.
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                with torch.no_grad():
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(x))
