"""Helpers shared by several test files (one file per module: tests/test_<module>.py)."""

from __future__ import annotations

import itertools

import numpy as np
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


def seeded_randn(m: int, dim: int, seed: int) -> torch.Tensor:
    """(m, dim) float64 standard normal noise from a generator seeded with ``seed``."""
    return torch.randn(m, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class CountedRows:
    """A velocity that counts the samples (rows) it evaluates."""

    def __init__(self, velocity) -> None:
        self.velocity, self.rows = velocity, 0

    def __call__(self, x, t):
        self.rows += x.shape[0]
        return self.velocity(x, t)


def brute_local_path(
    cost: np.ndarray, e0: np.ndarray, steps: int, discount: float
) -> tuple[float, list[int]]:
    """min over (start j, knots) of e0[j] + sum_m discount^m cost[i_m, i_{m+1}], by enumeration: (total,
    indices)."""
    n = len(e0)
    best: tuple[float, list[int]] = (np.inf, [])
    for path in itertools.combinations(range(n - 1), steps):
        idx = [*path, n - 1]
        total = e0[idx[0]] + sum(discount**m * cost[a, b] for m, (a, b) in enumerate(itertools.pairwise(idx)))
        if total < best[0]:
            best = (total, idx)
    return best
