"""flow_matching interop: its ODESolver stepping on a boss_fast Schedule gives bf.sample's result."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import torch

import boss_fast as bf
from boss_fast.models import load_bundled

pytest.importorskip("flow_matching")

from flow_matching.solver import ODESolver  # noqa: E402

from boss_fast.integrations.flow_matching import (  # noqa: E402
    as_model_wrapper,
    from_model_wrapper,
    time_grid,
)

TIMES = np.array([0.0, 0.08, 0.3, 0.65, 1.0])
SCHED = bf.Schedule(times=TIMES, indices=np.arange(5), cost=0.0, grid=TIMES)
EPS32 = float(torch.finfo(torch.float32).eps)
# torchdiffeq's Euler step is y + dt * f with dt = t1 - t0 formed from the grid tensor and a separately
# rounded product; bf.sample rounds the float64 step once as torch.add's alpha: a few float32 ulps per step.
TOL = dict(rtol=8 * EPS32 * len(TIMES), atol=8 * EPS32 * len(TIMES))


@pytest.fixture(scope="module")
def digits_dit():
    return load_bundled("digits_dit")


@pytest.mark.parametrize("grid", ["as_tensor", "time_grid", "float32"])
def test_ode_solver_on_a_schedule_equals_sample(digits_dit, grid):
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    tg = {
        "as_tensor": SCHED.as_tensor(),
        "time_grid": time_grid(SCHED),
        "float32": SCHED.as_tensor(dtype=torch.float32),
    }[grid]
    solver = ODESolver(velocity_model=as_model_wrapper(digits_dit))
    got = solver.sample(x_init=noise, step_size=None, method="euler", time_grid=tg)
    want = bf.sample(digits_dit, noise, SCHED)
    torch.testing.assert_close(got, want, **TOL)
    uniform = solver.sample(x_init=noise, step_size=None, method="euler", time_grid=torch.linspace(0, 1, 5))
    assert (uniform - want).abs().max() > 1e-3  # the grid is what decides the steps


GRID = np.array([0.0, 0.1, 0.3, 0.65, 1.0])


def later(start: str) -> bf.Schedule:
    """A 3-step schedule that starts at t = 0.1 with the start rule ``start``."""
    return bf.Schedule(times=GRID[1:], indices=np.arange(1, 5), cost=0.0, grid=GRID, start=start)


def test_ode_solver_from_a_later_start_equals_sample_and_scaled_is_refused(digits_dit):
    """ODESolver starts from x_init itself at time_grid[0]: the rule "noise" exactly; a "scaled" schedule
    above t = 0 is refused by name (its state there would be 0.9 x noise)."""
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    solver = ODESolver(velocity_model=as_model_wrapper(digits_dit))
    got = solver.sample(x_init=noise, step_size=None, method="euler", time_grid=time_grid(later("noise")))
    torch.testing.assert_close(got, bf.sample(digits_dit, noise, later("noise")), **TOL)
    assert (got - bf.sample(digits_dit, noise, later("scaled"))).abs().max() > 1e-3  # the rule matters
    with pytest.raises(ValueError, match=r"start rule is 'scaled'.*ODESolver.*start_state"):
        time_grid(later("scaled"))
    scaled_at_zero = bf.Schedule(times=GRID, indices=np.arange(5), cost=0.0, grid=GRID, start="scaled")
    assert torch.equal(time_grid(scaled_at_zero), time_grid(GRID))  # (1 - 0) x noise: the noise itself


def test_intermediates_are_the_schedule_states():
    flow = load_bundled("gmm2d")
    noise = torch.randn(16, 2, dtype=torch.float64)
    states = ODESolver(velocity_model=as_model_wrapper(flow)).sample(
        x_init=noise, step_size=None, time_grid=time_grid(SCHED), return_intermediates=True
    )
    assert states.shape == (5, 16, 2)
    torch.testing.assert_close(states[-1], bf.sample(flow, noise, SCHED), rtol=1e-12, atol=1e-12)


def test_reverse_adapter_runs_boss_on_a_flow_matching_model(digits_dit):
    wrapper = as_model_wrapper(digits_dit)  # any flow_matching-style model(x=..., t=...)
    velocity = from_model_wrapper(wrapper)
    noise = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(bf.sample(velocity, noise, SCHED), bf.sample(digits_dit, noise, SCHED))
    sched = bf.optimal_schedules(
        velocity, (1, 8, 8), 3, bf.SearchSettings(grid=10, num_samples=8, objective="local")
    )[3]
    direct = bf.optimal_schedules(
        digits_dit, (1, 8, 8), 3, bf.SearchSettings(grid=10, num_samples=8, objective="local")
    )[3]
    np.testing.assert_array_equal(sched.indices, direct.indices)  # the same model, the same schedule
    assert sched.cost == direct.cost


def test_extras_reach_the_model():
    seen = {}

    def velocity(x, t, label=None):
        seen["t"], seen["label"] = t, label
        return torch.zeros_like(x)

    wrapper = as_model_wrapper(velocity)
    wrapper(x=torch.zeros(3, 2), t=torch.tensor(0.25, dtype=torch.float64), label="seven")
    assert seen["label"] == "seven" and seen["t"].shape == (3,) and seen["t"].dtype == torch.float32
    back = from_model_wrapper(wrapper, label="two")
    back(torch.zeros(2, 2), torch.zeros(2))
    assert seen["label"] == "two"


def test_errors():
    with pytest.raises(TypeError, match="callable"):
        as_model_wrapper("model")
    with pytest.raises(TypeError, match="callable"):
        from_model_wrapper(3)
    with pytest.raises(ValueError, match=r"t must be 0-d or \(3,\)"):
        as_model_wrapper(lambda x, t: x)(x=torch.zeros(3, 2), t=torch.zeros(2))
    with pytest.raises(ValueError, match="strictly increasing"):
        time_grid([0.0, 0.5, 0.4, 1.0])


def test_missing_flow_matching_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "flow_matching.utils", None)  # what an absent package looks like
    monkeypatch.delitem(sys.modules, "boss_fast.integrations.flow_matching")
    with pytest.raises(ImportError, match=r"pip install 'boss_fast\[flow-matching\]'"):
        importlib.import_module("boss_fast.integrations.flow_matching")
