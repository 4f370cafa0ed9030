"""dopri5 (torchdiffeq) as the reference solver: reference_solution and the dopri5 teacher."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import boss_fast as bf
from boss_fast.metrics import endpoint_rmse
from boss_fast.models import load_bundled
from boss_fast.straighten import straightening_pairs

pytest.importorskip("torchdiffeq")


@pytest.fixture(scope="module")
def flow():
    return load_bundled("gmm2d")  # the exact marginal velocity of a Gaussian mixture: smooth, float64


def fine_rk4(flow, noise, t1=1.0):
    return bf.sample(flow, noise, np.linspace(0.0, t1, 401), solver="rk4")  # error ~1e-9 here


def test_reference_solution_converges_to_the_ode(flow):
    noise = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = fine_rk4(flow, noise)
    errors = [(bf.reference_solution(flow, noise, rtol=tol, atol=tol) - exact).abs().max() for tol in
              (1e-3, 1e-6, 1e-9)]  # fmt: skip
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-6
    half = bf.reference_solution(flow, noise, 0.0, 0.5, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(half, fine_rk4(flow, noise, 0.5), rtol=1e-6, atol=1e-6)


def test_euler_error_is_first_order_against_the_reference(flow):
    noise = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = bf.reference_solution(flow, noise, rtol=1e-9, atol=1e-9)
    err = [endpoint_rmse(bf.sample(flow, noise, bf.uniform_grid(n)), ref) for n in (50, 100, 200)]
    ratios = [err[0] / err[1], err[1] / err[2]]
    assert all(1.8 < r < 2.2 for r in ratios), ratios  # halving h halves the error


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


def test_missing_torchdiffeq_names_the_extra(flow, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)  # what an absent package looks like to import
    with pytest.raises(ImportError, match=r"pip install 'boss_fast\[reference\]'"):
        bf.reference_solution(flow, torch.zeros(2, 2, dtype=torch.float64))


def test_straightening_pairs_with_a_dopri5_teacher(flow):
    noise = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grid = bf.uniform_grid(6)
    sched = bf.Schedule(times=grid[[0, 2, 6]], indices=[0, 2, 6], cost=0.0, grid=grid, solver="dopri5")
    pairs = straightening_pairs(flow, sched, noise, grid=6, solver="dopri5", batch_size=8)
    states = bf.teacher_trajectory(flow, noise, grid, "dopri5", record="states").states  # the same one batch
    torch.testing.assert_close(pairs.end[1::2], states[6], rtol=0, atol=0)
    with pytest.raises(ValueError, match="'dopri5' runs in torchdiffeq and takes mode=None"):
        straightening_pairs(flow, sched, noise, grid=6, solver="dopri5", mode="eager")
