"""The few-step sampler: integrate a velocity model over a schedule's times.

Uses the package's single Euler step (``boss_fast.trajectories.euler_step``), so on the teacher's grid it
reproduces the teacher exactly. Times are host floats read once before the loop: nothing inside the loop
reads a device value, so it can be captured or compiled (the finiteness check reads its flags once, after
the loop).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch

from boss_fast._validation import STEP_SOLVERS, as_times, check_choice, check_noise
from boss_fast.schedule import Schedule
from boss_fast.trajectories import VelocityFn, ode_step

__all__ = ["sample"]


def sample(
    velocity: VelocityFn,
    noise: torch.Tensor,
    schedule: Schedule | Sequence[float] | np.ndarray | torch.Tensor,
    solver: str = "euler",
    *,
    grad: bool = False,
    check_finite: bool = True,
) -> torch.Tensor:
    """Run the K-step sampler from ``noise`` at ``times[0]`` to ``times[-1]``; return the last state.

    Args:
        velocity: ``velocity(x, t)``, t = 0 noise, t = 1 data.
        noise: (B, ...) floating tensor, the state at the first time; the result has its dtype and device.
        schedule: a ``Schedule`` or its times (a sequence, numpy array or tensor, strictly increasing in
            [0, 1]).
            K = len(times) - 1 steps; NFE = K for Euler, 2K for Heun, 4K for RK4.
        solver: "euler" (what BOSS optimises for), "heun" or "rk4".
        grad: run under ``torch.no_grad()`` (default) or track gradients (e.g. to backpropagate through
            the sampler).
        check_finite: check that every state is finite (one device flag per step, read with one host
            sync after the loop); the error names the first step where a non-finite value appeared.

    Returns:
        (B, ...) tensor, the state at ``times[-1]``.

    Example:
        >>> x = sample(lambda x, t: 3 * t[:, None] ** 2 * torch.ones_like(x), torch.ones(1, 1), [0.0, 1.0],
        ...            solver="rk4")
        >>> float(x)
        2.0
    """
    times = as_times(schedule.times if isinstance(schedule, Schedule) else schedule, "schedule times")
    noise = check_noise(noise)
    solver = check_choice(solver, STEP_SOLVERS, "solver")
    hosts = times.tolist()  # Python floats: the loop below never reads a device value
    flags = []
    x = noise
    with nullcontext() if grad else torch.no_grad():
        for t0, t1 in zip(hosts[:-1], hosts[1:], strict=True):
            x = ode_step(velocity, x, t0, t1, solver)
            if check_finite:
                flags.append(torch.isfinite(x).all())  # a device flag per step, read once after the loop
    if check_finite:
        ok = torch.stack(flags).cpu().numpy()
        if not ok.all():
            k = int(np.flatnonzero(~ok)[0])
            raise ValueError(
                f"velocity returned non-finite values in step {k}, "
                f"from t = {hosts[k]!r} to t = {hosts[k + 1]!r}"
            )
    return x
