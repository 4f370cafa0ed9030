"""boss_fast.models.gmm."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from boss_fast.models import (
    NARROW_STD,
    GaussianMixtureFlow,
    eight_gaussians,
    load_bundled,
)

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def rk4(velocity: Velocity, x: torch.Tensor, steps: int, t_end: float = 1.0) -> torch.Tensor:
    """Classical RK4 with uniform steps from t = 0 to ``t_end``."""
    h = t_end / steps
    ones = torch.ones(x.shape[0], dtype=x.dtype)
    for i in range(steps):
        t = i * h
        k1 = velocity(x, t * ones)
        k2 = velocity(x + 0.5 * h * k1, (t + 0.5 * h) * ones)
        k3 = velocity(x + 0.5 * h * k2, (t + 0.5 * h) * ones)
        k4 = velocity(x + h * k3, (t + h) * ones)
        x = x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def asymmetric_mixture() -> GaussianMixtureFlow:
    """Three overlapping components with unequal weights and stds: nothing cancels by symmetry."""
    means = torch.tensor([[1.5, 0.0], [-1.0, 1.0], [0.0, -2.0]], dtype=torch.float64)
    return GaussianMixtureFlow(means, torch.tensor([0.3, 0.5, 0.2]), torch.tensor([0.5, 0.3, 0.2]))


def test_gmm_endpoints() -> None:
    # t = 0: E[x1 - x0 | x0 = x] = E[x1] - x.  t = 1: E[x1 - x0 | x1 = x] = x.
    flow = asymmetric_mixture()
    x = torch.randn(7, 2, dtype=torch.float64)
    data_mean = (flow.log_weights.exp()[:, None] * flow.means).sum(0)
    torch.testing.assert_close(flow(x, torch.zeros(7)), data_mean - x, rtol=0, atol=1e-12)
    torch.testing.assert_close(flow(x, torch.ones(7)), x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.8])
def test_gmm_matches_monte_carlo(t: float) -> None:
    # Independent estimate of E[x1 - x0 | x_t = x] that uses no Gaussian conditioning: draw x1 from the data,
    # the x0 that reaches x is (x - t x1) / (1 - t), and weight by its N(0, I) density (self-normalised
    # importance sampling; the Jacobian is constant and cancels).
    flow = asymmetric_mixture()
    gen = torch.Generator().manual_seed(0)
    x1 = flow.sample_data(400_000, gen, dtype=torch.float64)
    points = torch.tensor([[0.3, -0.2], [1.0, 0.5], [-0.8, -1.2]], dtype=torch.float64)
    for x in points:
        x0 = (x[None] - t * x1) / (1.0 - t)
        logw = -0.5 * x0.square().sum(1)
        w = torch.softmax(logw, dim=0)
        u = x1 - x0
        estimate = (w[:, None] * u).sum(0)
        # Delta-method standard error of the ratio estimator.
        se = torch.sqrt((w[:, None].square() * (u - estimate).square()).sum(0))
        exact = flow(x[None], torch.tensor([t], dtype=torch.float64))[0]
        assert torch.all((exact - estimate).abs() < 5 * se + 1e-6), (t, x, exact, estimate, se)


def test_gmm_solves_continuity_equation() -> None:
    # The marginal velocity of x_t is exact iff d/dt log p_t + div v + v . grad log p_t = 0 everywhere.
    flow = asymmetric_mixture()
    gen = torch.Generator().manual_seed(1)
    x = (2.0 * torch.randn(16, 2, generator=gen, dtype=torch.float64)).requires_grad_(True)
    t = torch.linspace(0.05, 0.95, 16, dtype=torch.float64).requires_grad_(True)
    logp = flow.marginal_log_prob(x, t)
    dlogp_dt, grad_logp = torch.autograd.grad(logp.sum(), (t, x), create_graph=True)
    v = flow(x, t.detach())
    div = sum(torch.autograd.grad(v[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(2))
    residual = dlogp_dt + div + (v * grad_logp).sum(1)
    scale = dlogp_dt.abs() + div.abs() + (v * grad_logp).sum(1).abs()
    assert (residual.abs() <= 1e-10 * (1 + scale)).all(), residual


def test_gmm_single_gaussian_flow_map_is_affine() -> None:
    # One component: the flow map is x_t = t mu + sqrt(t^2 s^2 + (1 - t)^2) x0 (see gmm.py). RK4's global
    # error is O(h^4): 200 steps leave ~1e-10, far below the 1e-7 tolerance.
    mu, s = torch.tensor([[1.5, -0.5, 2.0]], dtype=torch.float64), 0.3
    flow = GaussianMixtureFlow(mu, torch.tensor([s]))
    x0 = torch.randn(64, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for t_end in (0.5, 1.0):
        exact = t_end * mu + math.sqrt(t_end**2 * s**2 + (1 - t_end) ** 2) * x0
        torch.testing.assert_close(rk4(flow, x0, 200, t_end), exact, rtol=0, atol=1e-7)


def test_gmm_transports_noise_to_mixture() -> None:
    # Integrating the exact field accurately carries N(0, I) to the mixture: component fractions and each
    # component's mean and spread must match within Monte-Carlo error (n = 4000 points).
    flow = asymmetric_mixture()
    n = 4000
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x1 = rk4(flow, x0, 100)
    # Posterior responsibilities at t = 1 give each point's component, as a soft assignment.
    log_lik = torch.stack(
        [flow.log_weights[k] - (x1 - flow.means[k]).square().sum(1) / (2 * flow.stds[k] ** 2)
         - 2 * torch.log(flow.stds[k]) for k in range(3)], dim=1,
    )  # fmt: skip
    resp = torch.softmax(log_lik, dim=1)
    frac = resp.mean(0)
    weights = flow.log_weights.exp()
    assert torch.all((frac - weights).abs() < 5 * torch.sqrt(weights * (1 - weights) / n)), frac
    mean = x1.mean(0)
    second = x1.square().mean(0)
    exp_mean = (weights[:, None] * flow.means).sum(0)
    exp_second = (weights[:, None] * (flow.means.square() + flow.stds[:, None] ** 2)).sum(0)
    var = exp_second - exp_mean.square()
    assert torch.all((mean - exp_mean).abs() < 5 * torch.sqrt(var / n)), (mean, exp_mean)
    assert torch.all((second - exp_second).abs() < 0.05 * exp_second), (second, exp_second)


def test_gmm_flattens_image_shapes_and_dtypes() -> None:
    gen = torch.Generator().manual_seed(4)
    flow = GaussianMixtureFlow(torch.randn(5, 12, generator=gen), torch.rand(5, generator=gen) + 0.1)
    x = torch.randn(3, 3, 2, 2, generator=gen, dtype=torch.float64)
    t = torch.rand(3, generator=gen, dtype=torch.float64)
    out = flow(x, t)
    assert out.shape == x.shape and out.dtype == torch.float64
    torch.testing.assert_close(out.reshape(3, 12), flow(x.reshape(3, 12), t))
    out32 = flow(x.float(), t.float())
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out, rtol=1e-4, atol=1e-5)
    # Far from every component the responsibilities stay finite (logsumexp), in float32 too.
    far = flow(torch.full((2, 12), 1e3), torch.tensor([0.5, 0.99]))
    assert torch.isfinite(far).all()


def test_gmm_sample_data_and_default_mixture() -> None:
    flow = eight_gaussians()
    a = flow.sample_data(1000, torch.Generator().manual_seed(5))
    b = flow.sample_data(1000, torch.Generator().manual_seed(5))
    assert a.shape == (1000, 2) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    radius = a.double().norm(dim=1)
    assert abs(radius.mean().item() - 2.0) < 0.05
    assert load_bundled("gmm2d")(a, torch.rand(1000)).shape == (1000, 2)


@pytest.mark.parametrize(
    ("means", "stds", "weights"),
    [
        (torch.zeros(3), torch.ones(3), None),  # means not (K, D)
        (torch.zeros(3, 2), torch.ones(2), None),  # stds length
        (torch.zeros(3, 2), torch.tensor([1.0, 0.0, 1.0]), None),  # zero std
        (torch.zeros(3, 2), torch.ones(3), torch.tensor([1.0, -1.0, 1.0])),  # negative weight
        (torch.zeros(3, 2), torch.tensor([1.0, float("nan"), 1.0]), None),
    ],
)
def test_gmm_rejects_bad_parameters(
    means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor | None
) -> None:
    with pytest.raises(ValueError):
        GaussianMixtureFlow(means, stds, weights)


def test_gmm_rejects_bad_inputs() -> None:
    flow = eight_gaussians()
    with pytest.raises(ValueError, match="elements per row"):
        flow(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="t must have shape"):
        flow(torch.zeros(4, 2), torch.zeros(3))


def test_gmm_subset_is_the_class_conditional_flow() -> None:
    """A class = a set of components: its flow is the mixture of those alone, and the classes' flows
    average, weighted by their posterior at (x, t), to the unconditional one (Bayes)."""
    flow = eight_gaussians(std=NARROW_STD)
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.05, 0.95, 6, dtype=torch.float64)
    one = flow.subset([3])
    single = GaussianMixtureFlow(flow.means[3:4], flow.stds[3:4])
    assert torch.equal(one(x, t), single(x, t))
    classes = [[0, 1], [2, 3], [4, 5, 6, 7]]
    log_lik = torch.stack([flow.subset(c).marginal_log_prob(x, t) for c in classes], 1)
    prior = torch.tensor([2.0, 2.0, 4.0], dtype=torch.float64) / 8
    post = torch.softmax(log_lik + torch.log(prior), dim=1)
    mixed = sum(post[:, i, None] * flow.subset(c)(x, t) for i, c in enumerate(classes))
    torch.testing.assert_close(mixed, flow(x, t), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(flow.subset([0, 1])(x, t), flow(x, t))
    for bad in ([], [0, 0], [8], [-1]):
        with pytest.raises(ValueError, match="distinct indices in"):
            flow.subset(bad)
