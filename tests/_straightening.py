"""What the straightening tests share (tests/test_straighten_<module>.py): small velocity models with a
known flow, schedules on uniform grids, ``straighten`` with its keywords split, and the run sizes."""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

import boss_fast as bf
from boss_fast.grids import uniform_grid
from boss_fast.models.dit import DiT
from boss_fast.straighten import StraightenSettings, straighten

needs_peft = pytest.mark.skipif(
    importlib.util.find_spec("peft") is None, reason="peft not installed (pip install 'boss_fast[lora]')"
)


SETTING_NAMES = {f.name for f in dataclasses.fields(StraightenSettings)}


def run_straighten(model, sched, teacher=None, **kwargs):
    """``straighten`` with the keywords split: the settings' fields into a ``StraightenSettings``, the rest
    (shape, noise, progress, checkpoint_dir, ..., return_stats) passed as the run's keywords."""
    settings = StraightenSettings(**{k: v for k, v in kwargs.items() if k in SETTING_NAMES})
    run = {k: v for k, v in kwargs.items() if k not in SETTING_NAMES}
    return straighten(model, sched, teacher, settings, **run)


class TinyVelocity(nn.Module):
    """A small MLP velocity on (B, D) states: v = net([x, t])."""

    def __init__(self, dim: int = 2, hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None].to(x.dtype)], dim=1))


class RotationFlow(nn.Module):
    """dx/dt = A x with A a rotation generator of angle ``w``: x(1) = R(w) x(0), a curved flow whose exact
    one-step velocity (R - I) x is linear in x, so a linear student can represent it exactly."""

    def __init__(self, w: float = 1.2) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2, bias=False, dtype=torch.float64)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[0.0, -w, 0.0], [w, 0.0, 0.0]], dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.cat([x, t[:, None].to(x.dtype)], dim=1))


def schedule_at(n: int, indices: list[int]) -> bf.Schedule:
    grid = uniform_grid(n)
    idx = np.asarray(indices)
    return bf.Schedule(times=grid[idx], indices=idx, cost=0.0, grid=grid)


FAST = dict(num_pairs=16, grid=10, iters=4, batch_size=8, warmup=2, progress=False, shape=(2,))


def weights_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Bank(nn.Module):
    """v = W x + c[m mod P] for noise row m; ``calls`` records (x, rows) of every training-time call."""

    def __init__(self, p: int = 3, dim: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(dim, dim, dtype=torch.float64)
        self.register_buffer("bank", 3.0 * torch.randn(p, dim, dtype=torch.float64))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def entry(self, x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.calls.append((x.detach().clone(), rows.clone()))
        return self.lin(x) + self.bank[rows % len(self.bank)]

    def for_rows(self, rows: torch.Tensor):
        return lambda x, t: self.entry(x, t, rows)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.entry(x, t, torch.arange(len(x)))


FAST_DIT = dict(num_pairs=8, grid=8, iters=3, batch_size=4, warmup=0, lr=1e-2, progress=False)


def small_dit(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    net = DiT(input_size=4, patch_size=2, in_channels=1, hidden=16, depth=2, heads=2)
    for p in net.parameters():  # adaLN-Zero starts at 0: random weights so every block does work
        nn.init.normal_(p, std=0.1)
    return net


def dit_schedule(n: int = 8, indices=(0, 3, 8), shape=(1, 4, 4)) -> bf.Schedule:
    grid = uniform_grid(n)
    idx = np.asarray(indices)
    return bf.Schedule(times=grid[idx], indices=idx, cost=0.0, grid=grid, shape=shape)
