"""The exact rectified-flow velocity of a Gaussian-mixture data distribution.

Data x1 ~ sum_k w_k N(mu_k, s_k^2 I) in R^D, noise x0 ~ N(0, I), x_t = t x1 + (1 - t) x0, u = x1 - x0.
Given component k, (x_t, u) is jointly Gaussian:

    x_t | k ~ N(t mu_k, v_k(t) I),          v_k(t) = t^2 s_k^2 + (1 - t)^2
    Cov(u, x_t | k) = (t s_k^2 - (1 - t)) I
    E[u | x_t = x, k] = mu_k + c_k(t) (x - t mu_k),   c_k(t) = (t s_k^2 - (1 - t)) / v_k(t)

and the marginal velocity is the posterior average

    v(x, t) = sum_k r_k(x, t) E[u | x, k],   r_k ∝ w_k N(x; t mu_k, v_k I)

with the responsibilities r_k computed by a softmax of log-likelihoods (logsumexp-stable for any distance).
Checks: at t = 0, v = sum_k w_k mu_k - x; at t = 1, v = x (E[x0 | x1] = 0). For one component the ODE
dx/dt = v is solved in closed form by x_t = t mu + sqrt(v(t)) x0, so it carries N(0, I) to N(mu, s^2 I).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["NARROW_STD", "GaussianMixtureFlow", "eight_gaussians"]

#: Component std of the narrow mixture ("gmm2d_narrow"): modes 0.05 wide, 1.5 apart on a circle of radius 2.
#: Its paths commit to a mode late and then turn sharply (the velocity's time scale near t = 1 is about the
#: std), so uniform Euler steps are far from the best few-step schedule.
NARROW_STD = 0.05


class GaussianMixtureFlow(nn.Module):
    """Exact marginal velocity ``E[x1 - x0 | x_t = x]`` for isotropic Gaussian-mixture data.

    Args:
        means: (K, D) component means mu_k.
        stds: (K,) isotropic standard deviations s_k > 0.
        weights: (K,) non-negative mixture weights (normalised here); default uniform.

    ``forward(x, t)``: x (B, D) or (B, *shape) with prod(shape) == D (flattened internally), t (B,) in
    [0, 1] (a 0-d t is broadcast) -> (B, ...) like x. Computed in float64 for float64 inputs, otherwise in
    float32, and returned in x's dtype.

    Example:
        >>> flow = GaussianMixtureFlow(torch.tensor([[2.0, 0.0]]), torch.tensor([0.5]))
        >>> flow(torch.zeros(1, 2), torch.zeros(1))  # at t = 0 the velocity is mean(data) - x
        tensor([[2., 0.]])
    """

    means: torch.Tensor
    stds: torch.Tensor
    log_weights: torch.Tensor

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if means.dim() != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        k = means.shape[0]
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else weights
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if stds.shape != (k,) or weights.shape != (k,):
            raise ValueError(
                f"stds and weights must have shape ({k},), got {tuple(stds.shape)}, {tuple(weights.shape)}"
            )
        if not (torch.isfinite(means).all() and torch.isfinite(stds).all() and torch.isfinite(weights).all()):
            raise ValueError("means, stds and weights must be finite")
        if (stds <= 0).any():
            raise ValueError("stds must be > 0 (a point mass has an unbounded velocity at t = 1)")
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        self.register_buffer("means", means)
        self.register_buffer("stds", stds)
        self.register_buffer("log_weights", torch.log(weights / weights.sum()))

    @property
    def dim(self) -> int:
        """Data dimension D."""
        return self.means.shape[1]

    def _prepare(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.dim:
            raise ValueError(
                f"x must have shape (B, D) or (B, *shape) with {self.dim} elements per row, "
                f"got {tuple(x.shape)}"
            )
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},) or be 0-d, got {tuple(t.shape)}")
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        return x.reshape(x.shape[0], self.dim).to(dtype), t.to(dtype), dtype

    def _component_terms(
        self, x: torch.Tensor, t: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, K) log w_k N(x; t mu_k, v_k I), (B, K) variances v_k, (B, K, D) x - t mu_k, (K, D) means."""
        mu = self.means.to(dtype)
        s2 = self.stds.to(dtype).square()
        tk = t[:, None]
        var = tk.square() * s2[None] + (1.0 - tk).square()  # (B, K)
        diff = x[:, None, :] - tk[:, :, None] * mu[None]  # (B, K, D)
        log_lik = (
            self.log_weights.to(dtype)[None]
            - 0.5 * self.dim * torch.log(2.0 * math.pi * var)
            - 0.5 * diff.square().sum(-1) / var
        )
        return log_lik, var, diff, mu

    def marginal_log_prob(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log p_t(x) of the marginal of x_t: x (B, D) or (B, *shape), t (B,) -> (B,)."""
        x2, t2, dtype = self._prepare(x, t)
        log_lik, _, _, _ = self._component_terms(x2, t2, dtype)
        return torch.logsumexp(log_lik, dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x2, t2, dtype = self._prepare(x, t)
        log_lik, var, diff, mu = self._component_terms(x2, t2, dtype)
        resp = torch.softmax(log_lik, dim=1)  # (B, K) posterior over components
        s2 = self.stds.to(dtype).square()
        tk = t2[:, None]
        coef = (tk * s2[None] - (1.0 - tk)) / var  # (B, K): c_k(t)
        cond = mu[None] + coef[:, :, None] * diff  # (B, K, D): E[u | x, k]
        v = torch.einsum("bk,bkd->bd", resp, cond)
        return v.reshape(x.shape).to(x.dtype)

    def subset(self, components: Sequence[int]) -> GaussianMixtureFlow:
        """The exact flow of the data restricted to ``components`` (indices, weights renormalised): with a
        class = a set of components, ``flow.subset(cls)`` is the class-conditional velocity and ``flow``
        itself the unconditional one (the class prior is the components' weight), e.g. for classifier-free
        guidance, ``guided_velocity(flow.subset([0, 1]), flow, scale)``."""
        idx = [int(k) for k in components]
        if not idx or len(set(idx)) != len(idx) or not all(0 <= k < self.means.shape[0] for k in idx):
            raise ValueError(
                f"components must be distinct indices in [0, {self.means.shape[0]}), got {list(components)}"
            )
        return GaussianMixtureFlow(self.means[idx], self.stds[idx], self.log_weights[idx].exp())

    def sample_data(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Draw n data points x1 ~ sum_k w_k N(mu_k, s_k^2 I) -> (n, D) in ``dtype`` on the buffers'
        device (drawn in float64, so a seed gives the same points in every dtype)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        device = self.means.device
        comp = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, dtype=torch.float64, generator=generator, device=device)
        return (self.means[comp] + self.stds[comp, None] * noise).to(dtype)


def eight_gaussians(radius: float = 2.0, std: float = 0.2) -> GaussianMixtureFlow:
    """The default 2-D mixture ("gmm2d"): 8 equally weighted Gaussians of std ``std`` at the angles
    2 pi k / 8 on a circle of ``radius``. Trajectories from N(0, I) bend towards the nearest mode as
    the posterior sharpens, so the velocity field is far from constant along a path (what BOSS exploits)."""
    angles = torch.arange(8, dtype=torch.float64) * (2.0 * math.pi / 8.0)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixtureFlow(means, torch.full((8,), float(std), dtype=torch.float64))
