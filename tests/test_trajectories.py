"""Teacher trajectories: analytic flows, solver orders, the Euler-slope convention, and input checks."""

from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest
import torch
from _helpers import TinyVelocity

import boss_fast as bf
from boss_fast.grids import uniform_grid
from boss_fast.metrics import endpoint_rmse
from boss_fast.models import load_bundled
from boss_fast.ode import Trajectory, euler_update, ode_step
from boss_fast.straighten import straightening_pairs
from boss_fast.trajectories import seeded_noise, teacher_trajectory


def cubic_velocity(x, t):
    """v = 3 t^2: carries x(0) to x(0) + 1 at t = 1 (flow_matching's analytic test)."""
    return 3.0 * t.view(-1, *([1] * (x.ndim - 1))) ** 2 * torch.ones_like(x)


def linear_velocity(x, t):
    """v = x: x(1) = e x(0)."""
    return x


def nonlinear_velocity(x, t):
    return torch.sin(3.0 * x) * (1.0 + t.view(-1, *([1] * (x.ndim - 1))))


class Counter:
    """Wraps a velocity and records every call's batch size, time dtype and shape."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, x, t):
        self.calls.append((x.shape[0], t.dtype, t.shape, t.device))
        return self.fn(x, t)


def test_euler_update_is_x_plus_h_v_and_writes_out():
    x, v = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(euler_update(x, v, 0.25), x + 0.25 * v, rtol=0, atol=0)
    out = torch.empty(3, 4)
    assert euler_update(x, v, 0.25, out=out) is out
    torch.testing.assert_close(out, x + 0.25 * v, rtol=0, atol=0)


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4"])
def test_cubic_velocity_matches_quadrature_closed_forms(solver):
    n = 10
    h = 1.0 / n
    traj = teacher_trajectory(cubic_velocity, torch.ones(2, 1, dtype=torch.float64), uniform_grid(n), solver)
    end = traj.states[-1, 0, 0].item()
    # Euler is the left Riemann sum of 3 t^2, Heun the trapezoid rule (error h^2 / 2 for f'' = 6),
    # RK4 Simpson's rule (exact for a quadratic integrand).
    expected = {
        "euler": 1.0 + 3.0 * h**3 * (n - 1) * n * (2 * n - 1) / 6.0,
        "heun": 2.0 + h**2 / 2.0,
        "rk4": 2.0,
    }[solver]
    assert end == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize(("solver", "order"), [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_solvers_converge_at_their_order(solver, order):
    x0 = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    errors = []
    for n in (20, 40):
        end = teacher_trajectory(linear_velocity, x0, uniform_grid(n), solver).states[-1]
        errors.append((end - math.e * x0).abs().max().item())
    assert math.log2(errors[0] / errors[1]) == pytest.approx(order, abs=0.1)


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4"])
def test_velocities_are_euler_slopes_at_teacher_states(solver):
    times = uniform_grid(6)
    noise = torch.randn(3, 2, 2, dtype=torch.float64)
    traj = teacher_trajectory(nonlinear_velocity, noise, times, solver)
    assert isinstance(traj, Trajectory)
    assert traj.states.shape == (7, 3, 2, 2) and traj.velocities.shape == (6, 3, 2, 2)
    assert traj.states.dtype == noise.dtype and not traj.states.requires_grad
    torch.testing.assert_close(traj.states[0], noise, rtol=0, atol=0)
    for i in range(6):
        t = torch.full((3,), times[i], dtype=torch.float64)
        torch.testing.assert_close(traj.velocities[i], nonlinear_velocity(traj.states[i], t), rtol=0, atol=0)
        step = ode_step(nonlinear_velocity, traj.states[i], times[i], times[i + 1], solver)
        torch.testing.assert_close(traj.states[i + 1], step, rtol=0, atol=0)
    np.testing.assert_array_equal(traj.times, times)


@pytest.mark.parametrize(("solver", "evaluations"), [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_evaluation_count_and_time_argument(solver, evaluations):
    counter = Counter(nonlinear_velocity)
    teacher_trajectory(counter, torch.randn(5, 3), uniform_grid(8), solver)
    assert len(counter.calls) == 8 * evaluations  # none at the last time
    assert all(c == (5, torch.float32, (5,), torch.device("cpu")) for c in counter.calls)


def test_record_states_drops_velocities():
    full = teacher_trajectory(nonlinear_velocity, torch.ones(2, 3), uniform_grid(4))
    light = teacher_trajectory(nonlinear_velocity, torch.ones(2, 3), uniform_grid(4), record="states")
    assert light.velocities is None
    torch.testing.assert_close(light.states, full.states, rtol=0, atol=0)


def test_module_velocity_runs_without_grad():
    net = torch.nn.Linear(3, 3)
    traj = teacher_trajectory(lambda x, t: net(x), torch.randn(4, 3), uniform_grid(3))
    assert not traj.states.requires_grad and not traj.velocities.requires_grad


@pytest.mark.parametrize(
    ("times", "match"),
    [
        ([0.0, 0.5, 0.5, 1.0], r"strictly increasing; times\[2\] = 0.5 <= times\[1\] = 0.5"),
        ([0.0, 0.7, 0.3], "strictly increasing"),
        ([0.0, 1.5], r"\[0, 1\]"),
        ([-0.1, 0.5], r"\[0, 1\]"),
        ([0.5], "at least 2"),
        ([0.0, float("nan")], "finite"),
        ([[0.0, 1.0]], "1-D"),
    ],
)
def test_bad_times_raise(times, match):
    with pytest.raises(ValueError, match=match):
        teacher_trajectory(nonlinear_velocity, torch.ones(1, 1), times)


def test_bad_noise_raises():
    with pytest.raises(TypeError, match="noise must be a torch.Tensor"):
        teacher_trajectory(nonlinear_velocity, np.ones((2, 2)), [0.0, 1.0])
    with pytest.raises(TypeError, match="floating-point"):
        teacher_trajectory(nonlinear_velocity, torch.ones(2, 2, dtype=torch.int64), [0.0, 1.0])
    with pytest.raises(ValueError, match="batch dimension"):
        teacher_trajectory(nonlinear_velocity, torch.tensor(1.0), [0.0, 1.0])
    with pytest.raises(ValueError, match="at least one sample"):
        teacher_trajectory(nonlinear_velocity, torch.ones(0, 2), [0.0, 1.0])


def test_ode_step_refuses_an_unknown_solver():
    with pytest.raises(ValueError, match="unknown solver 'rk45'"):
        ode_step(nonlinear_velocity, torch.ones(1, 1), 0.0, 1.0, "rk45")


def test_unknown_solver_and_record_raise():
    with pytest.raises(ValueError, match="unknown solver 'dpm'"):
        teacher_trajectory(nonlinear_velocity, torch.ones(1, 1), [0.0, 1.0], solver="dpm")
    with pytest.raises(ValueError, match="unknown record"):
        teacher_trajectory(nonlinear_velocity, torch.ones(1, 1), [0.0, 1.0], record="none")


@pytest.mark.parametrize(
    ("velocity", "error", "match"),
    [
        (lambda x, t: x[:, :1], ValueError, r"shape \(2, 1\) at t = 0.0, expected the input's \(2, 3\)"),
        (lambda x, t: x.double(), ValueError, "dtype torch.float64 at t = 0.0"),
        (lambda x, t: x.numpy(), TypeError, "returned ndarray"),
    ],
)
def test_bad_velocity_output_raises(velocity, error, match):
    with pytest.raises(error, match=match):
        teacher_trajectory(velocity, torch.ones(2, 3), [0.0, 0.5, 1.0])


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4"])
def test_non_finite_velocity_names_the_grid_time(solver):
    def blows_up(x, t):
        return torch.where(t.view(-1, 1) >= 0.6, torch.nan, 1.0) * torch.ones_like(x)

    with pytest.raises(ValueError, match=r"t = 0\.6|from t = 0\.4 to t = 0\.6"):
        teacher_trajectory(blows_up, torch.ones(2, 3), uniform_grid(5), solver)


def test_non_finite_noise_is_reported():
    with pytest.raises(ValueError, match="noise contains non-finite"):
        teacher_trajectory(nonlinear_velocity, torch.full((1, 2), torch.inf), [0.0, 1.0])


def test_seeded_noise_is_independent_of_batching():
    whole = seeded_noise((2, 3), 0, 10, seed=7)
    parts = torch.cat([seeded_noise((2, 3), a, b, seed=7) for a, b in ((0, 3), (3, 4), (4, 10))])
    torch.testing.assert_close(parts, whole, rtol=0, atol=0)
    assert whole.shape == (10, 2, 3) and whole.dtype == torch.float32
    assert not torch.equal(seeded_noise((2, 3), 0, 10, seed=8), whole)
    assert seeded_noise((4,), 0, 2, dtype=torch.float64).dtype == torch.float64
    half = seeded_noise((2, 3), 0, 10, seed=7, dtype=torch.bfloat16)
    torch.testing.assert_close(half, whole.to(torch.bfloat16), rtol=0, atol=0)
    assert seeded_noise((2,), 3, 3).shape == (0, 2)


# From test_reference_solver.py: dopri5 (torchdiffeq) as the reference solver: reference_solution and the
# dopri5 teacher.

needs_torchdiffeq = pytest.mark.skipif(
    importlib.util.find_spec("torchdiffeq") is None, reason="needs torchdiffeq"
)


@pytest.fixture(scope="module")
def flow():
    return load_bundled("gmm2d")  # the exact marginal velocity of a Gaussian mixture: smooth, float64


def fine_rk4(flow, noise, t1=1.0):
    return bf.sample(flow, noise, np.linspace(0.0, t1, 401), solver="rk4")  # error ~1e-9 here


@needs_torchdiffeq
def test_reference_solution_converges_to_the_ode(flow):
    noise = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = fine_rk4(flow, noise)
    errors = [(bf.reference_solution(flow, noise, rtol=tol, atol=tol) - exact).abs().max() for tol in
              (1e-3, 1e-6, 1e-9)]  # fmt: skip
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-6
    half = bf.reference_solution(flow, noise, 0.0, 0.5, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(half, fine_rk4(flow, noise, 0.5), rtol=1e-6, atol=1e-6)


@needs_torchdiffeq
def test_euler_error_is_first_order_against_the_reference(flow):
    noise = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = bf.reference_solution(flow, noise, rtol=1e-9, atol=1e-9)
    err = [endpoint_rmse(bf.sample(flow, noise, bf.uniform_grid(n)), ref) for n in (50, 100, 200)]
    ratios = [err[0] / err[1], err[1] / err[2]]
    assert all(1.8 < r < 2.2 for r in ratios), ratios  # halving h halves the error


@needs_torchdiffeq
def test_dopri5_teacher(flow):
    noise = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grid = bf.uniform_grid(8)
    traj = bf.teacher_trajectory(flow, noise, grid, "dopri5", rtol=1e-9, atol=1e-9)
    assert traj.states.shape == (9, 16, 2) and traj.velocities.shape == (8, 16, 2)
    for i in (3, 8):  # the states are the ODE solution at the grid times
        torch.testing.assert_close(traj.states[i], fine_rk4(flow, noise, grid[i]), rtol=1e-6, atol=1e-6)
    for i in (0, 5):  # the velocities are the model at those states
        t = torch.full((16,), grid[i], dtype=torch.float64)
        torch.testing.assert_close(traj.velocities[i], flow(traj.states[i], t), rtol=0, atol=0)
    assert bf.teacher_trajectory(flow, noise, grid, "dopri5", record="states").velocities is None


@needs_torchdiffeq
def test_cost_matrix_and_schedule_with_a_dopri5_teacher(flow, tmp_path):
    noise = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    grid = bf.uniform_grid(10)
    cost = bf.cost_matrix(flow, noise, grid, solver="dopri5", progress=False)
    euler = bf.cost_matrix(flow, noise, grid, solver="euler", progress=False)
    steps = np.diag(cost, 1)
    # The Euler teacher's own steps cost nothing (up to float64 rounding); an accurate teacher charges them.
    assert (steps > 1e-5).all() and (np.diag(euler, 1) < 1e-20).all()
    sched = bf.optimal_schedules(
        flow,
        (2,),
        3,
        bf.SearchSettings(grid=10, num_samples=32, solver="dopri5", objective="local"),
        dtype=torch.float64,
    )[3]
    sched.save(tmp_path / "s.json")
    assert bf.Schedule.load(tmp_path / "s.json").solver == "dopri5"


@needs_torchdiffeq
def test_errors(flow):
    noise = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="dopri5's tolerances"):
        bf.teacher_trajectory(flow, noise, [0.0, 1.0], "euler", rtol=1e-3)
    with pytest.raises(ValueError, match="'dopri5' runs in torchdiffeq and takes mode=None"):
        bf.teacher_trajectory(flow, noise, [0.0, 1.0], "dopri5", mode="eager")
    with pytest.raises(ValueError, match="'dopri5' runs in torchdiffeq and takes mode=None"):
        bf.cost_matrix(flow, noise, [0.0, 1.0], solver="dopri5", mode="eager", progress=False)
    with pytest.raises(ValueError, match="'dopri5' runs in torchdiffeq and takes mode=None"):
        bf.optimal_schedules(
            flow,
            (2,),
            1,
            bf.SearchSettings(grid=4, num_samples=4, solver="dopri5", mode="eager", objective="local"),
        )[1]
    with pytest.raises(ValueError, match="unknown solver 'dopri5'"):
        bf.sample(flow, noise, [0.0, 1.0], solver="dopri5")
    with pytest.raises(ValueError, match="unknown solver 'dopri5'"):
        bf.ode.ode_step(flow, noise, 0.0, 1.0, "dopri5")
    with pytest.raises(ValueError, match="strictly increasing"):
        bf.reference_solution(flow, noise, 0.5, 0.5)
    with pytest.raises(ValueError, match="must be > 0"):
        bf.reference_solution(flow, noise, rtol=0.0)
    with pytest.raises(ValueError, match="non-finite"):
        bf.reference_solution(lambda x, t: x / 0.0, noise)
    with pytest.raises(ValueError, match="velocity returned shape"):
        bf.reference_solution(lambda x, t: x[:, :1], noise)


@needs_torchdiffeq
def test_missing_torchdiffeq_names_the_extra(flow, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)  # what an absent package looks like to import
    with pytest.raises(ImportError, match=r"pip install 'boss_fast\[reference\]'"):
        bf.reference_solution(flow, torch.zeros(2, 2, dtype=torch.float64))


@needs_torchdiffeq
def test_straightening_pairs_with_a_dopri5_teacher(flow):
    noise = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grid = bf.uniform_grid(6)
    sched = bf.Schedule(times=grid[[0, 2, 6]], indices=[0, 2, 6], cost=0.0, grid=grid, solver="dopri5")
    pairs = straightening_pairs(flow, sched, noise, grid=6, solver="dopri5", batch_size=8)
    states = bf.teacher_trajectory(flow, noise, grid, "dopri5", record="states").states  # the same one batch
    torch.testing.assert_close(pairs.end[1::2], states[6], rtol=0, atol=0)
    with pytest.raises(ValueError, match="'dopri5' runs in torchdiffeq and takes mode=None"):
        straightening_pairs(flow, sched, noise, grid=6, solver="dopri5", mode="eager")


# From test_sampler.py

COMPILE_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"  # inductor's import

SCHED = [0.0, 0.25, 0.6, 1.0]  # K = 3, uneven steps

EPS32 = torch.finfo(torch.float32).eps


@pytest.mark.parametrize("record", ["all", "states"])
def test_teacher_trajectory_on_the_sampler(digits_dit, record):
    noise = torch.randn(3, 1, 8, 8)
    grid = [0.0, 0.2, 0.5, 1.0]
    plain = teacher_trajectory(digits_dit, noise, grid, "heun", record=record)
    eager = teacher_trajectory(digits_dit, noise, grid, "heun", record=record, mode="eager")
    assert torch.equal(eager.states, plain.states)
    assert (eager.velocities is None) == (record == "states")
    if record == "all":
        assert torch.equal(eager.velocities, plain.velocities)


@pytest.mark.filterwarnings(COMPILE_WARNING)
def test_teacher_trajectory_compiled():
    model = TinyVelocity()
    noise = torch.randn(4, 5)
    got = teacher_trajectory(model, noise, SCHED, mode="compile")
    want = teacher_trajectory(model, noise, SCHED)
    torch.testing.assert_close(got.states, want.states, rtol=16 * EPS32, atol=16 * EPS32)


def test_teacher_trajectory_on_the_sampler_checks_values():
    def diverges(x, t):
        return torch.where(t[:, None] > 0.4, torch.full_like(x, float("inf")), x)

    with pytest.raises(ValueError, match=r"non-finite values at t = 0\.6"):
        teacher_trajectory(diverges, torch.randn(2, 5), SCHED, mode="eager")
    with pytest.raises(ValueError, match="unknown mode"):
        teacher_trajectory(TinyVelocity(), torch.randn(2, 5), SCHED, mode="fast")
