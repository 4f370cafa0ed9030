"""The few-step sampler: analytic flows, agreement with the teacher, schedule forms, grad mode, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _helpers import TinyVelocity
from torch import nn

import boss_fast as bf
from boss_fast.grids import uniform_grid
from boss_fast.kernels import euler_step
from boss_fast.kernels.euler_step import euler_step_reference
from boss_fast.ode import for_rows, sample
from boss_fast.sampler import TeacherRecorder
from boss_fast.schedule import schedules_from_cost
from boss_fast.trajectories import teacher_trajectory


def cubic_velocity(x, t):
    """v = 3 t^2: the exact flow carries x to x + 1 between t = 0 and t = 1."""
    return 3.0 * t.view(-1, *([1] * (x.ndim - 1))) ** 2 * torch.ones_like(x)


def nonlinear_velocity(x, t):
    return torch.sin(3.0 * x) * (1.0 + t.view(-1, *([1] * (x.ndim - 1))))


@pytest.mark.parametrize(
    ("solver", "times", "expected"),
    [
        ("rk4", [0.0, 1.0], 2.0),  # Simpson's rule is exact for a quadratic integrand
        ("rk4", [0.0, 0.3, 1.0], 2.0),
        ("heun", [0.0, 1.0], 2.5),  # trapezoid: 1 + (0 + 3) / 2
        ("euler", [0.0, 1.0], 1.0),  # v(0) = 0
        ("euler", [0.0, 0.5, 1.0], 1.375),  # 1 + 0.5 * 3 * 0.25
    ],
)
def test_cubic_velocity(solver, times, expected):
    x = sample(cubic_velocity, torch.ones(3, 2, dtype=torch.float64), times, solver)
    torch.testing.assert_close(x, torch.full((3, 2), expected, dtype=torch.float64), rtol=1e-15, atol=0)


def test_constant_velocity_one_euler_step_is_exact():
    noise = torch.randn(4, 3, dtype=torch.float64)
    x = sample(lambda x, t: torch.full_like(x, 0.75), noise, [0.0, 1.0])
    torch.testing.assert_close(x, noise + 0.75, rtol=0, atol=0)


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4"])
def test_on_the_teacher_grid_it_reproduces_the_teacher_bit_for_bit(solver):
    times = uniform_grid(12)
    noise = torch.randn(5, 2, 3)
    teacher = teacher_trajectory(nonlinear_velocity, noise, times, solver)
    torch.testing.assert_close(
        sample(nonlinear_velocity, noise, times, solver), teacher.states[-1], rtol=0, atol=0
    )


def test_every_schedule_form_gives_the_same_result():
    grid = uniform_grid(8)
    cost = np.triu(np.square(np.subtract.outer(grid, grid)), 1)
    sched = schedules_from_cost(cost, 4, grid=grid)[4]
    noise = torch.randn(3, 2)
    expected = sample(nonlinear_velocity, noise, sched)
    for form in (sched.times, sched.times.tolist(), torch.tensor(sched.times), tuple(sched.times)):
        torch.testing.assert_close(sample(nonlinear_velocity, noise, form), expected, rtol=0, atol=0)


@pytest.mark.parametrize(("solver", "evaluations"), [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_nfe_and_time_argument(solver, evaluations):
    seen = []

    def velocity(x, t):
        seen.append((t.shape, t.dtype, t[0].item()))
        return nonlinear_velocity(x, t)

    sample(velocity, torch.randn(6, 2, dtype=torch.float64), [0.0, 0.2, 0.7, 1.0], solver)
    assert len(seen) == 3 * evaluations
    assert all(s[:2] == ((6,), torch.float64) for s in seen)
    assert [s[2] for s in seen[::evaluations]] == [0.0, 0.2, 0.7]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_result_keeps_the_noise_dtype(dtype):
    x = sample(nonlinear_velocity, torch.randn(2, 3).to(dtype), [0.0, 0.5, 1.0])
    assert x.dtype == dtype and x.shape == (2, 3)


def test_no_grad_by_default_grad_on_request():
    net = torch.nn.Linear(3, 3)
    noise = torch.randn(4, 3)
    assert not sample(lambda x, t: net(x), noise, [0.0, 0.5, 1.0]).requires_grad
    out = sample(lambda x, t: net(x), noise, [0.0, 0.5, 1.0], grad=True)
    out.sum().backward()
    assert net.weight.grad is not None and torch.all(torch.isfinite(net.weight.grad))


@pytest.mark.parametrize(
    ("times", "match"),
    [
        ([0.0, 0.5, 0.5, 1.0], "strictly increasing"),
        ([0.0, 1.2], r"\[0, 1\]"),
        ([0.0], "at least 2"),
    ],
)
def test_bad_times(times, match):
    with pytest.raises(ValueError, match=match):
        sample(nonlinear_velocity, torch.randn(2, 2), times)


def test_bad_noise_solver_and_velocity():
    with pytest.raises(TypeError, match="floating-point"):
        sample(nonlinear_velocity, torch.ones(2, 2, dtype=torch.int32), [0.0, 1.0])
    with pytest.raises(ValueError, match="batch dimension"):
        sample(nonlinear_velocity, torch.tensor(0.5), [0.0, 1.0])
    with pytest.raises(TypeError, match="torch.Tensor"):
        sample(nonlinear_velocity, [[0.5]], [0.0, 1.0])
    with pytest.raises(ValueError, match="unknown solver"):
        sample(nonlinear_velocity, torch.ones(2, 2), [0.0, 1.0], solver="dpm++")
    with pytest.raises(ValueError, match=r"shape \(2, 1\) at t = 0.0"):
        sample(lambda x, t: x[:, :1], torch.ones(2, 2), [0.0, 1.0])
    with pytest.raises(ValueError, match="dtype torch.float16"):
        sample(lambda x, t: x.half(), torch.ones(2, 2), [0.0, 1.0])


def test_non_finite_velocity_names_the_step():
    def velocity(x, t):
        return torch.where(t.view(-1, 1) >= 0.5, torch.inf, 0.0) * torch.ones_like(x)

    with pytest.raises(ValueError, match=r"step 2, from t = 0\.5 to t = 0\.75"):
        sample(velocity, torch.ones(2, 2), [0.0, 0.25, 0.5, 0.75, 1.0])
    # the check can be turned off (then nothing syncs at all)
    out = sample(velocity, torch.ones(2, 2), [0.0, 0.25, 0.5, 0.75, 1.0], check_finite=False)
    assert not torch.isfinite(out).any()


def test_for_rows_hands_each_row_set_to_a_bank_and_leaves_plain_velocities_alone():
    class Bank:
        def for_rows(self, rows):
            return lambda x, t: x + (rows % 3).to(x.dtype)[:, None]

    rows = torch.tensor([4, 5, 6])
    v = for_rows(Bank(), rows)
    torch.testing.assert_close(
        v(torch.zeros(3, 2), torch.zeros(3)), torch.tensor([[1.0] * 2, [2.0] * 2, [0.0] * 2])
    )

    def plain(x, t):
        return -x

    assert for_rows(plain, rows) is plain


# From test_sampler.py

SCHED = [0.0, 0.25, 0.6, 1.0]  # K = 3, uneven steps


def _cond_pair(dtype):
    gen = torch.Generator().manual_seed(5)
    w1, w2 = torch.randn(5, 5, generator=gen, dtype=dtype), torch.randn(5, 5, generator=gen, dtype=dtype)

    def v_cond(x, t):
        return torch.tanh(x @ w1) * (1.0 + t[:, None])

    def v_uncond(x, t):
        return torch.sin(x @ w2) - t[:, None]

    return v_cond, v_uncond


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_guided_velocity_is_what_the_guided_sampler_steps(dtype):
    """Bit for bit (torch backend, Euler): the Sampler's doubled-batch combine and Euler update are
    cfg_combine and euler_update, the same operations sample() runs on guided_velocity."""
    v_cond, v_uncond = _cond_pair(dtype)
    w, noise = 4.5, torch.randn(3, 5, dtype=dtype, generator=torch.Generator().manual_seed(6))
    guided = bf.guided_velocity(v_cond, v_uncond, w)
    want = sample(guided, noise, SCHED)
    pair = bf.cfg_pair(v_cond, v_uncond)
    recorder = TeacherRecorder(
        pair, SCHED, mode="eager", guidance=w, backend="torch", dtype=dtype, record="all"
    )
    traj = recorder(noise)
    assert torch.equal(traj.states[-1], want)
    for i, t in enumerate(SCHED[:-1]):  # the recorded slope is the guided velocity at the recorded state
        tt = torch.full((3,), t, dtype=dtype)
        assert torch.equal(traj.velocities[i], guided(traj.states[i], tt))
    # The doubled batch [x; x] -> [v_u; v_c], combined by the kernel's reference, is guided_velocity's step.
    x, tt = noise, torch.full((3,), 0.25, dtype=dtype)
    doubled = pair(torch.cat([x, x]), torch.cat([tt, tt]))
    assert torch.equal(euler_step_reference(x, doubled, 0.35, w), bf.ode.euler_update(x, guided(x, tt), 0.35))
    # Negative controls: w = 0 is the unconditional field, w = 1 the conditional; w matters.
    assert torch.equal(bf.guided_velocity(v_cond, v_uncond, 0.0)(x, tt), v_uncond(x, tt))
    # (w = 1 up to one rounding of v_u + (v_c - v_u))
    torch.testing.assert_close(bf.guided_velocity(v_cond, v_uncond, 1.0)(x, tt), v_cond(x, tt))
    assert not torch.allclose(want, sample(bf.guided_velocity(v_cond, v_uncond, 1.5), noise, SCHED))


def test_guided_velocity_errors_and_identity():
    v_cond, v_uncond = _cond_pair(torch.float32)
    with pytest.raises(ValueError, match="scale must be finite"):
        bf.guided_velocity(v_cond, v_uncond, float("inf"))
    with pytest.raises(TypeError, match="v_uncond must be callable"):
        bf.guided_velocity(v_cond, None, 2.0)
    with pytest.raises(ValueError, match="doubled batch"):
        bf.cfg_pair(v_cond, v_uncond)(torch.randn(3, 5), torch.zeros(3))
    # A module's guided field is fingerprinted with its scale (a schedule records which field it was for).
    net = TinyVelocity()
    fps = {bf.model_fingerprint(bf.guided_velocity(net, net, w)) for w in (2.0, 3.0)}
    assert len(fps) == 2


def test_cfg_pair_refuses_what_is_not_a_velocity():
    """cfg_pair(1, flow) was accepted and failed at the first call: refused at construction, by name."""
    flow = TinyVelocity()
    with pytest.raises(TypeError, match="v_cond must be callable as velocity\\(x, t\\), got int 1"):
        bf.cfg_pair(1, flow)
    with pytest.raises(TypeError, match="v_uncond must be callable"):
        bf.cfg_pair(flow, "flow")


@pytest.mark.parametrize(
    "v_uncond, v_cond, fragment",
    [
        (torch.zeros(4, 2), torch.ones(3, 2), r"one shape .* got \(4, 2\) and \(3, 2\)"),
        (torch.zeros(4, 2), torch.ones(4, 1), r"got \(4, 2\) and \(4, 1\)"),  # would broadcast
        (torch.zeros(4, 2), torch.ones(1, 2), r"got \(4, 2\) and \(1, 2\)"),  # would broadcast
    ],
)
def test_cfg_combine_refuses_halves_of_different_shapes(v_uncond, v_cond, fragment):
    """Batches 4 and 3 raised torch's own size error; batches that broadcast were silently combined."""
    with pytest.raises(ValueError, match=fragment):
        bf.ode.cfg_combine(v_uncond, v_cond, 2.0)
    with pytest.raises(TypeError, match="v_cond must be a torch.Tensor, got list"):
        bf.ode.cfg_combine(v_uncond, [1.0, 2.0], 2.0)


# Refusals: nothing silently wrong (from the former tests/test_refusals.py)

BAD_SCALES = {
    "per-feature tensor": (torch.tensor([2.0, 3.0]), TypeError, "got a tensor of shape \\(2,\\)"),
    "0-d tensor": (torch.tensor(2.0), TypeError, "got a tensor of shape \\(\\)"),
    "bool": (True, TypeError, "must be a real number, got True"),
    "string": ("2", TypeError, "must be a real number"),
    "NaN": (math.nan, ValueError, "must be finite"),
    "inf": (math.inf, ValueError, "must be finite"),
}


def _diffusers_velocity(w):
    diffusers = pytest.importorskip("diffusers")
    del diffusers
    from boss_fast.integrations.diffusers import DiffusersVelocity

    return DiffusersVelocity(nn.Linear(2, 2), negative={}, guidance_scale=w)


SCALE_TAKERS = {
    "cfg_combine": lambda w: bf.ode.cfg_combine(torch.zeros(2), torch.ones(2), w),
    "guided_velocity": lambda w: bf.guided_velocity(lambda x, t: x, lambda x, t: -x, w),
    "Sampler(guidance=)": lambda w: bf.Sampler(lambda x, t: x, [0.0, 1.0], guidance=w),
    "euler_step(guidance=)": lambda w: euler_step(torch.zeros(1, 2), torch.zeros(2, 2), 0.5, guidance=w),
    "DiffusersVelocity(guidance_scale=)": _diffusers_velocity,
}


@pytest.mark.parametrize("taker", sorted(SCALE_TAKERS))
@pytest.mark.parametrize("case", sorted(BAD_SCALES))
def test_every_guidance_scale_is_checked_the_same_way(taker, case):
    value, error, fragment = BAD_SCALES[case]
    with pytest.raises(error, match=fragment):
        SCALE_TAKERS[taker](value)


def test_cfg_combine_still_takes_numbers():
    assert torch.equal(
        bf.ode.cfg_combine(torch.zeros(2), torch.ones(2), np.float32(2.5)), torch.full((2,), 2.5)
    )
    assert torch.equal(bf.ode.cfg_combine(torch.zeros(2), torch.ones(2), 3), torch.full((2,), 3.0))


# ------------------------------------------------------------------------------------------ the start rule


def _late_schedule(start):
    grid = uniform_grid(10)
    return bf.Schedule(times=grid[[3, 6, 10]], indices=[3, 6, 10], cost=0.0, grid=grid, start=start)


@pytest.mark.parametrize(("rule", "scale"), [("zero", 1.0), ("noise", 1.0), ("scaled", 0.7)])
def test_each_start_rule_gives_its_start_state(rule, scale):
    noise = torch.randn(4, 3, dtype=torch.float64)
    assert torch.equal(bf.ode.start_state(noise, rule, 0.3), noise * scale)
    with pytest.raises(ValueError, match="unknown start rule"):
        bf.ode.start_state(noise, "late", 0.3)


@pytest.mark.parametrize("start", ["noise", "scaled"])
def test_sample_starts_from_the_rules_state_at_the_first_time(start):
    """A constant velocity: the state at t = 1 is the start state plus (1 - t_s) v, in closed form."""
    noise = torch.randn(4, 3, dtype=torch.float64)
    sched = _late_schedule(start)
    x = sample(lambda x, t: torch.full_like(x, 2.0), noise, sched)
    start_state = noise * (0.7 if start == "scaled" else 1.0)
    torch.testing.assert_close(x, start_state + 0.7 * 2.0, rtol=1e-15, atol=1e-15)
    # Plain times carry no rule: the noise itself is the state there (every sampler's behaviour before).
    plain = sample(nonlinear_velocity, noise, sched.times)
    assert torch.equal(sample(nonlinear_velocity, noise, _late_schedule("noise")), plain)
    assert torch.equal(sample(nonlinear_velocity, noise * 0.7, sched.times),
                       sample(nonlinear_velocity, noise, _late_schedule("scaled")))  # fmt: skip
