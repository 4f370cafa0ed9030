"""Helpers shared by several test files (one file per module: tests/test_<module>.py)."""

from __future__ import annotations

import torch
from torch import nn


class TinyVelocity(nn.Module):
    """A small nonlinear velocity (B, 5) -> (B, 5) depending on t; compiles in about a second."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(5, 5)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(x)) * (1.0 + t[:, None])


class DoubledVelocity(nn.Module):
    """A 'conditional' model on a doubled batch: first half unconditional, second half conditional."""

    doubled_batch = True  # Sampler(guidance=)'s protocol (boss_fast.ode.is_cfg_pair)

    def __init__(self) -> None:
        super().__init__()
        self.base = TinyVelocity()
        self.shift = nn.Parameter(torch.linspace(-1.0, 1.0, 5), requires_grad=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0] // 2
        v = self.base(x, t)
        return torch.cat([v[:b], v[b:] + self.shift * (1.0 - t[b:, None])])


def guided(model: DoubledVelocity, w: float):
    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = model(torch.cat([x, x]), torch.cat([t, t]))
        b = x.shape[0]
        return v[:b] + w * (v[b:] - v[:b])

    return velocity
