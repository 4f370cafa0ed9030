"""A small MLP velocity network for 2-D (or any low-dimensional flat) data."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MLPVelocity", "fourier_time_features"]


def fourier_time_features(t: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """Fourier features of times ``t`` (B,) in [0, 1] -> (B, 2 n_freqs) float32:
    [sin(pi 2^j t), cos(pi 2^j t)] for j = 0 .. n_freqs - 1. The lowest frequency is monotone on [0, 1]
    (no aliasing of t = 0 with t = 1); the highest, 2^(n-1) pi, resolves the fast change of a GMM velocity
    near t = 1 (its time scale is about the component std, 0.2 for gmm2d)."""
    freqs = math.pi * 2.0 ** torch.arange(n_freqs, dtype=torch.float32, device=t.device)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class MLPVelocity(nn.Module):
    """``velocity(x, t)`` = MLP([x, fourier(t)]) with SiLU activations.

    Args:
        dim: data dimension D.
        hidden: width of the hidden layers.
        depth: number of hidden layers (>= 1).
        n_freqs: number of Fourier frequencies of t (2 n_freqs time features).

    ``forward(x, t)``: x (B, D), t (B,) in [0, 1] (a 0-d t is broadcast) -> (B, D) in x's dtype.

    Example:
        >>> net = MLPVelocity()
        >>> net(torch.zeros(5, 2), torch.rand(5)).shape
        torch.Size([5, 2])
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, n_freqs: int = 8) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.dim, self.hidden, self.depth, self.n_freqs = int(dim), int(hidden), int(depth), int(n_freqs)
        layers: list[nn.Module] = [nn.Linear(dim + 2 * n_freqs, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def config(self) -> dict[str, int]:
        """Constructor arguments: ``MLPVelocity(**net.config())`` builds the same architecture."""
        return {"dim": self.dim, "hidden": self.hidden, "depth": self.depth, "n_freqs": self.n_freqs}

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLPVelocity expects x of shape (B, {self.dim}), got {tuple(x.shape)}")
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},) or be 0-d, got {tuple(t.shape)}")
        dtype = self.net[0].weight.dtype
        h = torch.cat([x.to(dtype), fourier_time_features(t, self.n_freqs).to(dtype)], dim=1)
        return self.net(h).to(x.dtype)
