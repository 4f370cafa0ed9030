"""The cost matrix: against its definition entry by entry (near-diagonal included), closed forms,
the reducible (sum, count) form, streaming, and checkpoint/resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers import seeded_randn

import boss_fast as bf
import boss_fast.cost as cost_module
from boss_fast.cost import trajectory_cost, trajectory_cost_sums
from boss_fast.grids import uniform_grid
from boss_fast.ode import start_state
from boss_fast.trajectories import teacher_trajectory

# The kernel sums O(N) Gram products, each a float64 dot product over D features: its relative error is
# a few (N + D) * 2**-53 ~ 1e-13 at the sizes below (observed <= 5e-15); 1e-11 leaves margin.
RTOL = 1e-11
EPS = float(np.finfo(np.float64).eps)


def direct_cost(states, velocities, times, metric="l2sq"):
    """cost[i, j] by its definition, one pair at a time, in float64: the oracle.

    Written as (x_j - x_i) - (t_j - t_i) v_i: for float32 inputs x_j - x_i is exact in float64, so the only
    rounding is that of (t_j - t_i) v_i and of the subtraction, each at most eps times the magnitude of the
    terms. Returns the matrix and that magnitude, ``scale[i, j]`` = rms over samples of
    ||x_j - x_i|| + |t_j - t_i| ||v_i||: the oracle's own rounding floor is ~eps * scale.
    """
    x = torch.as_tensor(states).double()
    v = torch.as_tensor(velocities).double()
    n, b = x.shape[:2]
    out, scale = np.zeros((n, n)), np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            step = (x[j] - x[i]).reshape(b, -1)
            slope = ((times[j] - times[i]) * v[i]).reshape(b, -1)
            sq = (step - slope).square().sum(dim=1)
            out[i, j] = (sq if metric == "l2sq" else sq.sqrt()).mean().item()
            scale[i, j] = (step.norm(dim=1) + slope.norm(dim=1)).square().mean().sqrt().item()
    return out, scale


def assert_entrywise_close(actual, oracle, metric="l2sq", rtol=RTOL):
    """Every entry within rtol of its own magnitude, plus the oracle's own rounding floor.

    The floor is what rounding the terms of e_ij by eps * scale does to ||e||^2 (2 ||e|| eps scale) or to
    ||e||: it matters only where the entry is pure rounding (an Euler teacher's cost[i, i+1], ~1e-32 in
    float64) and is 1e-16 * scale^2 smaller than the Gram expansion's error eps * ||x||^2.
    """
    expected, scale = oracle
    assert actual.shape == expected.shape and actual.dtype == np.float64
    np.testing.assert_array_equal(np.tril(actual), 0.0)
    floor = 8 * EPS * scale * (2 * np.sqrt(expected) if metric == "l2sq" else 1.0)
    excess = np.abs(actual - expected) - (rtol * np.abs(expected) + floor)
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess[worst] <= 0, f"cost{list(worst)}: {actual[worst]!r} vs {expected[worst]!r}"


def nonlinear_velocity(x, t):
    return torch.sin(3.0 * x) * (1.0 + t.view(-1, *([1] * (x.ndim - 1))))


@pytest.mark.parametrize("metric", ["l2sq", "l2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_last_velocity", [False, True])
def test_random_trajectories_match_definition(metric, dtype, with_last_velocity):
    gen = torch.Generator().manual_seed(0)
    n = 13
    states = torch.randn(n, 4, 3, 5, generator=gen, dtype=dtype)
    velocities = torch.randn(n if with_last_velocity else n - 1, 4, 3, 5, generator=gen, dtype=dtype)
    times = np.sort(np.random.default_rng(0).uniform(0, 1, n))
    oracle = direct_cost(states, velocities[: n - 1], times, metric)
    assert_entrywise_close(trajectory_cost(states, velocities, times, metric), oracle, metric)


@pytest.mark.parametrize("metric", ["l2sq", "l2"])
@pytest.mark.parametrize("solver", ["euler", "heun", "rk4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_real_teachers_match_definition_including_near_diagonal(metric, solver, dtype):
    times = uniform_grid(40)
    noise = torch.randn(6, 2, 4, generator=torch.Generator().manual_seed(1), dtype=dtype)
    traj = teacher_trajectory(nonlinear_velocity, noise, times, solver)
    actual = trajectory_cost(traj.states, traj.velocities, times, metric)
    assert_entrywise_close(actual, direct_cost(traj.states, traj.velocities, times, metric), metric)
    if solver == "euler":
        # The BOSS defect: one teacher step costs only its rounding (float32: ~1e-7 of x, squared for
        # "l2sq"), two steps cost O(h^2) ~ 1e-3 of x.
        first, second = np.diag(actual, 1), np.diag(actual, 2)
        assert np.all(first[:-1] < (1e-6 if metric == "l2sq" else 1e-3) * second)
    else:
        assert np.all(np.diag(actual, 1) > 0)


def test_the_check_rejects_a_gram_expansion():
    # ||x_j - x_i||^2 - 2 (t_j - t_i) <x_j - x_i, v_i> + (t_j - t_i)^2 ||v_i||^2, in float64, is what the
    # near-diagonal check guards against: it cancels ~1e-2 ||x||^2 down to ~1e-32 next to the diagonal.
    times = uniform_grid(20)
    traj = teacher_trajectory(nonlinear_velocity, torch.randn(4, 6, dtype=torch.float64), times)
    x, v = traj.states, traj.velocities
    expanded = np.zeros((21, 21))
    for i in range(20):
        for j in range(i + 1, 21):
            s, d = x[j] - x[i], times[j] - times[i]
            expanded[i, j] = (s.square().sum() - 2 * d * (s * v[i]).sum() + d * d * v[i].square().sum()) / 4
    oracle = direct_cost(x, v, times)
    assert_entrywise_close(trajectory_cost(x, v, times), oracle)
    with pytest.raises(AssertionError):
        assert_entrywise_close(np.abs(expanded), oracle)


def test_constant_velocity_costs_exactly_zero():
    # Dyadic times, slope and noise: every teacher step and every Euler jump is exact in float32.
    noise = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 4.0
    times = uniform_grid(8)
    for solver in ("euler", "heun", "rk4"):
        traj = teacher_trajectory(lambda x, t: torch.full_like(x, 0.5), noise, times, solver)
        np.testing.assert_array_equal(trajectory_cost(traj.states, traj.velocities, times), 0.0)
        np.testing.assert_array_equal(trajectory_cost(traj.states, traj.velocities, times, "l2"), 0.0)


@pytest.mark.parametrize("metric", ["l2sq", "l2"])
def test_linear_flow_closed_form(metric):
    # Exact flow of v = a x: x(t) = exp(a t) x0. An Euler jump of length d from t_i misses by
    # (expm1(a d) - a d) exp(a t_i) x0, so cost[i, j] = (expm1(a d) - a d)^2 exp(2 a t_i) mean ||x0||^2.
    a = 1.5
    times = np.sort(np.concatenate([[0.0, 1.0], np.random.default_rng(2).uniform(0, 1, 30)]))
    x0 = torch.randn(5, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    growth = torch.exp(a * torch.as_tensor(times)).view(-1, 1, 1)
    states = growth * x0
    norms = x0.square().sum(dim=1)
    d = np.subtract.outer(times, times).T  # d[i, j] = t_j - t_i
    miss = np.abs(np.expm1(a * d) - a * d) * np.exp(a * times)[:, None]
    if metric == "l2sq":
        expected = miss**2 * norms.mean().item()
    else:
        expected = miss * norms.sqrt().mean().item()
    expected = np.triu(expected, 1)
    # The states carry one rounding of exp(a t), ~1e-16 of x, against jump errors >= ~1e-5 of x here.
    actual = trajectory_cost(states, a * states[:-1], times, metric)
    np.testing.assert_array_equal(np.tril(actual), 0.0)
    np.testing.assert_allclose(actual, expected, rtol=1e-8, atol=0)


def test_euler_teacher_of_linear_velocity_closed_form():
    # Euler teacher of v = a x: x_i = P_0i x0 with P_ij = prod_{i <= m < j} (1 + a h_m); the jump i -> j
    # misses by (P_ij - 1 - a (t_j - t_i)) x_i.
    a, n = -2.0, 16
    times = uniform_grid(n)
    x0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    traj = teacher_trajectory(lambda x, t: a * x, x0, times)
    factors = 1.0 + a * np.diff(times)
    cum = np.concatenate([[1.0], np.cumprod(factors)])
    expected = np.zeros((n + 1, n + 1))
    for i in range(n + 1):
        for j in range(i + 2, n + 1):
            p = np.prod(factors[i:j])
            expected[i, j] = (p - 1.0 - a * (times[j] - times[i])) ** 2 * cum[i] ** 2
    expected *= x0.square().sum(dim=1).mean().item()
    actual = trajectory_cost(traj.states, traj.velocities, times)
    assert np.all(np.diag(actual, 1) < 1e-28)  # rounding of the teacher only
    upper = np.triu(np.ones_like(actual, dtype=bool), 2)
    np.testing.assert_allclose(actual[upper], expected[upper], rtol=1e-10)


@pytest.mark.parametrize("metric", ["l2sq", "l2"])
def test_tiling_does_not_change_the_result(metric, monkeypatch):
    gen = torch.Generator().manual_seed(7)
    states, velocities = torch.randn(9, 5, 3, 7, generator=gen), torch.randn(8, 5, 3, 7, generator=gen)
    times = uniform_grid(8)
    whole = trajectory_cost(states, velocities, times, metric)
    # 1 KiB tiles: 1 sample and 3 columns at a time for N = 9, so every loop of the kernel runs many times.
    monkeypatch.setattr(cost_module, "_CHUNK_BYTES", 1024)
    monkeypatch.setattr(cost_module, "_PAIR_BYTES", 4096)
    np.testing.assert_allclose(trajectory_cost(states, velocities, times, metric), whole, rtol=1e-14, atol=0)


def test_two_point_grid():
    states = torch.tensor([[[1.0, 2.0]], [[2.0, 2.5]]], dtype=torch.float64)
    cost = trajectory_cost(states, torch.tensor([[[0.5, 0.5]]], dtype=torch.float64), [0.0, 1.0])
    np.testing.assert_array_equal(cost, [[0.0, 0.25], [0.0, 0.0]])  # error (0.5, 0)


def test_sums_are_reducible_over_batches():
    times = uniform_grid(10)
    traj = teacher_trajectory(nonlinear_velocity, torch.randn(9, 3, dtype=torch.float64), times)
    sums, count = trajectory_cost_sums(traj.states, traj.velocities, times, "l2")
    assert count == 9
    first = trajectory_cost_sums(traj.states[:, :4], traj.velocities[:, :4], times, "l2")
    second = trajectory_cost_sums(traj.states[:, 4:], traj.velocities[:, 4:], times, "l2")
    assert first[1] + second[1] == 9
    np.testing.assert_allclose(first[0] + second[0], sums, rtol=1e-13, atol=0)
    np.testing.assert_allclose(sums / count, trajectory_cost(traj.states, traj.velocities, times, "l2"))


def test_numpy_inputs_and_tensor_times_are_accepted():
    gen = np.random.default_rng(5)
    states, velocities = gen.standard_normal((4, 2, 3)), gen.standard_normal((3, 2, 3))
    times = torch.tensor([0.0, 0.2, 0.7, 1.0])
    oracle = direct_cost(states, velocities, times.double().numpy())
    assert_entrywise_close(trajectory_cost(states, velocities, times), oracle)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"metric": "lpips"}, ValueError, "unknown metric 'lpips'"),
        ({"times": [0.0, 0.5, 1.0]}, ValueError, "times has 3 points but states has N = 4"),
        ({"times": [0.0, 0.6, 0.5, 1.0]}, ValueError, "strictly increasing"),
        ({"velocities": torch.zeros(2, 2, 3)}, ValueError, "velocities must have shape"),
        ({"velocities": torch.zeros(3, 2, 4)}, ValueError, "velocities must have shape"),
        ({"states": torch.zeros(4, 2, 3, dtype=torch.int32)}, TypeError, "floating point"),
        ({"states": torch.zeros(4)}, ValueError, r"shape \(N, B, ...\)"),
        ({"states": [[0.0]]}, TypeError, "torch.Tensor or numpy array"),
    ],
)
def test_trajectory_cost_bad_input(kwargs, error, match):
    args = {
        "states": torch.zeros(4, 2, 3),
        "velocities": torch.zeros(3, 2, 3),
        "times": [0.0, 0.25, 0.5, 1.0],
        "metric": "l2sq",
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        trajectory_cost(**args)


def test_non_finite_trajectory_is_refused():
    states = torch.zeros(4, 2, 3)
    states[2, 1, 0] = torch.nan
    with pytest.raises(ValueError, match="non-finite"):
        trajectory_cost(states, torch.zeros(3, 2, 3), [0.0, 0.25, 0.5, 1.0])


# ------------------------------------------------------------------------------------------ cost_matrix


# -------------------------------------------------------------------------- a free start's costs


def wavy(x, t):
    return torch.sin(3.0 * x) * (1.0 + t.view(-1, 1))


@pytest.mark.parametrize("metric", ["l2sq", "l2"])
@pytest.mark.parametrize("rule", ["noise", "scaled"])
def test_start_cost_sums_is_the_definition(rule, metric):
    traj = bf.teacher_trajectory(wavy, seeded_randn(7, 3, 8), bf.uniform_grid(10), "euler", record="states")
    sums, count = bf.cost.start_cost_sums(traj.states, traj.times, rule, metric)
    want = []
    for j, t in enumerate(traj.times.tolist()):
        err = (start_state(traj.states[0], rule, t) - traj.states[j]).square().sum(1)
        want.append(float((err.sqrt() if metric == "l2" else err).sum()))
    assert count == 7 and sums[0] == 0.0
    np.testing.assert_allclose(sums, want, rtol=1e-13)


def test_a_linear_path_costs_nothing_to_start_scaled_anywhere():
    """x_t = (1 - t) x_0 + t c: "scaled" misses t c at t, "noise" t x_0 - t c (closed forms)."""
    times, noise = bf.uniform_grid(8), seeded_randn(5, 2, 9)
    c = torch.tensor([1.0, -2.0], dtype=torch.float64)
    states = torch.stack([(1 - t) * noise + t * c for t in times.tolist()])
    scaled, _ = bf.cost.start_cost_sums(states, times, "scaled")
    np.testing.assert_allclose(scaled, 5 * 5.0 * times**2, rtol=1e-12)
    plain, _ = bf.cost.start_cost_sums(states, times, "noise")
    want = [float((t * noise - t * c).square().sum()) for t in times.tolist()]
    np.testing.assert_allclose(plain, want, rtol=1e-12)
