"""A small CNN classifier of the 8x8 digits, whose penultimate features define the digits Frechet distance."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from boss_fast.models.data import DIGITS_SHAPE

__all__ = ["DigitsClassifier"]


class DigitsClassifier(nn.Module):
    """CNN for (B, 1, 8, 8) digit images in [-1, 1] (the scaling of :func:`boss_fast.models.digits`).

    conv3x3(1 -> c) -> conv3x3(c -> 2c) -> avgpool -> conv3x3(2c -> 2c) -> avgpool -> linear(8c -> features),
    SiLU after each; then a linear layer to 10 logits.

    Args:
        channels: c, the first convolution's width.
        features: width of the penultimate layer returned by :meth:`features`.

    Example:
        >>> net = DigitsClassifier()
        >>> net.features(torch.zeros(2, 1, 8, 8)).shape, net(torch.zeros(2, 1, 8, 8)).shape
        (torch.Size([2, 64]), torch.Size([2, 10]))
    """

    def __init__(self, channels: int = 32, features: int = 64) -> None:
        super().__init__()
        self.channels = int(channels)
        self.n_features = int(features)
        c = self.channels
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * c, 2 * c, 3, padding=1)
        self.fc = nn.Linear(2 * c * 2 * 2, self.n_features)
        self.out = nn.Linear(self.n_features, 10)

    def config(self) -> dict[str, int]:
        """Constructor arguments: ``DigitsClassifier(**net.config())`` builds the same architecture."""
        return {"channels": self.channels, "features": self.n_features}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: x (B, 1, 8, 8) -> (B, features) in the parameters' dtype."""
        if x.dim() != 4 or tuple(x.shape[1:]) != DIGITS_SHAPE:
            raise ValueError(f"DigitsClassifier expects x of shape (B, 1, 8, 8), got {tuple(x.shape)}")
        h = x.to(self.conv1.weight.dtype)
        h = F.silu(self.conv1(h))
        h = F.avg_pool2d(F.silu(self.conv2(h)), 2)
        h = F.avg_pool2d(F.silu(self.conv3(h)), 2)
        return F.silu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: x (B, 1, 8, 8) -> (B, 10)."""
        return self.out(self.features(x))
