"""Teacher trajectories on a time grid (BOSS stage 1, step 2), the reference solution, and the run's identity.

Conventions: t in [0, 1], t = 0 noise, t = 1 data, dx/dt = v(x, t); a velocity model is any callable
``velocity(x, t)`` (see :mod:`boss_fast.ode`).

The teacher runs either as the plain loop over :func:`boss_fast.ode.ode_step` (``mode=None``) or on a
recording :class:`boss_fast.sampler.TeacherRecorder`. :class:`TeacherRunner` is the one per-shape cache
of such recorders that every caller (the cost streaming, straightening pairs, ``teacher_trajectory``
itself) shares: one recorder per (batch shape, dtype, device), built once and replayed. ``seeded_noise``
draws the noise a result was computed from (``boss_fast._identity`` fingerprints it and the weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from boss_fast._validation import (
    as_times,
    check_choice,
    check_float,
    check_int,
    check_noise,
    check_teacher,
    check_velocity_output,
)
from boss_fast.ode import (
    FIXED_STEP_METHODS,
    Trajectory,
    VelocityFn,
    evaluate,
    first_nonfinite_step,
    for_rows,
    ode_step,
)
from boss_fast.sampler import RECORDS, TeacherRecorder

__all__ = [
    "DenseTeacher",
    "TeacherRunner",
    "reference_solution",
    "seeded_noise",
    "teacher_evaluations",
    "teacher_trajectory",
]


class TeacherRunner:
    """The teacher of one (velocity, grid, solver, mode), run batch after batch.

    ``runner(noise)`` returns the noise's :class:`~boss_fast.ode.Trajectory`. With ``mode=None`` it is
    :func:`teacher_trajectory` (any solver, dopri5 included); with a mode, a
    :class:`~boss_fast.sampler.TeacherRecorder` per (batch shape, dtype, device), built on first use and
    replayed for every later batch of that shape (one captured graph on CUDA). Assumes validated
    arguments: the public entry points check them.

    Args:
        record: "all" (states and Euler slopes) or "states".
    """

    def __init__(
        self, velocity: VelocityFn, times: np.ndarray, solver: str, mode: str | None, record: str = "all"
    ) -> None:
        self.velocity, self.times, self.solver, self.mode, self.record = velocity, times, solver, mode, record
        self._recorders: dict[tuple, TeacherRecorder] = {}

    def __call__(self, noise: torch.Tensor, rows: torch.Tensor | None = None) -> Trajectory:
        """The trajectory of ``noise``; ``rows`` (B,) int64 are its global noise rows, which a bank of
        conditionings pairs with (``boss_fast.ode.for_rows``; a bank's recorder is built per batch)."""
        banked = rows is not None and hasattr(self.velocity, "for_rows")
        velocity = for_rows(self.velocity, rows) if banked else self.velocity
        if self.mode is None:
            return teacher_trajectory(velocity, noise, self.times, self.solver, record=self.record)
        key = (tuple(noise.shape), noise.dtype, noise.device)
        if banked or key not in self._recorders:
            b, dtype, dev = noise.shape[0], noise.dtype, noise.device
            recorder = TeacherRecorder(
                velocity, self.times, self.mode, b, dtype, dev, solver=self.solver, record=self.record
            )
            if banked:
                return recorder(noise)
            self._recorders[key] = recorder
        return self._recorders[key](noise)


class DenseTeacher:
    """The teacher's states on every grid point from a solver run on every ``stride``-th point only.

    The solver (a :class:`TeacherRunner`, any solver and mode) steps over ``times[::stride]`` (plus the last
    time when the stride does not reach it); the points in between come from the cubic Hermite interpolant
    of the two ends' states and slopes v(x, t) (the slopes the solver evaluates anyway, and one more
    evaluation at the last time), whose error is O(h^4) per interval: below Heun's own O(h^3) step error.
    Heun with stride 2 on a 100-step grid: 2 x 50 + 1 = 101 evaluations per sample instead of 200; on the
    bundled digits DiT and 2-D mixture it gave the global DP the same schedules at every K = 1..10
    (benchmarks/results/global_dp_cost.md). ``stride`` 1 is the runner itself.

    ``teacher(noise, rows)`` -> (N, B, ...) states in the noise's dtype (``rows``: the noise rows, for a
    bank of conditionings, as ``TeacherRunner``).

    Example:
        >>> grid = np.linspace(0.0, 1.0, 5)
        >>> dense = DenseTeacher(lambda x, t: 2 * t[:, None] * torch.ones_like(x), grid, "heun", None, 2)
        >>> [float(x) for x in dense(torch.zeros(1, 1)).reshape(-1)]  # x(t) = t^2: Heun and Hermite exact
        [0.0, 0.0625, 0.25, 0.5625, 1.0]
    """

    def __init__(self, velocity: VelocityFn, times: np.ndarray, solver: str, mode: str | None,
                 stride: int) -> None:  # fmt: skip
        n = len(times)
        self.knots = np.unique(np.append(np.arange(0, n, stride), n - 1))
        self.velocity, self.times, self.stride = velocity, times, stride
        record = "states" if stride == 1 else "all"
        self.runner = TeacherRunner(velocity, times[self.knots], solver, mode, record=record)

    def __call__(self, noise: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        trajectory = self.runner(noise, rows)
        if self.stride == 1:
            return trajectory.states
        velocity = self.velocity if rows is None else for_rows(self.velocity, rows)
        xs = trajectory.states
        with torch.no_grad():
            last = evaluate(velocity, xs[-1], float(self.times[-1]))[None]
        vs = torch.cat([trajectory.velocities, last])
        out = noise.new_empty((len(self.times), *noise.shape))
        out[self.knots] = xs
        for a, (lo, hi) in enumerate(zip(self.knots[:-1].tolist(), self.knots[1:].tolist(), strict=True)):
            h = float(self.times[hi] - self.times[lo])
            for j in range(lo + 1, hi):
                s = float((self.times[j] - self.times[lo]) / h)
                h00, h01 = 2 * s**3 - 3 * s**2 + 1, 3 * s**2 - 2 * s**3
                h10, h11 = (s**3 - 2 * s**2 + s) * h, (s**3 - s**2) * h
                out[j] = h00 * xs[a] + h01 * xs[a + 1] + h10 * vs[a] + h11 * vs[a + 1]
        if not bool(torch.isfinite(out).all()):
            raise ValueError("the dense teacher's states hold non-finite values")
        return out


def teacher_evaluations(n: int, solver: str, stride: int = 1) -> int | None:
    """Model evaluations per noise of the teacher on a grid of ``n`` points: ``solver``'s evaluations per
    step (``FIXED_STEP_METHODS``: Euler 1, Heun 2, RK4 4) on every ``stride``-th point (and the last), plus
    one at the last time when ``stride`` > 1 (:class:`DenseTeacher`'s end slope); None for "dopri5"
    (adaptive: known only after the run). Each evaluation is one model call on the whole batch.

    Example:
        >>> [teacher_evaluations(101, s) for s in ("euler", "heun", "rk4", "dopri5")]
        [100, 200, 400, None]
        >>> teacher_evaluations(101, "heun", stride=2)  # 50 Heun steps and the end slope
        101
    """
    if solver not in FIXED_STEP_METHODS:
        return None
    steps = len(np.unique(np.append(np.arange(0, n, stride), n - 1))) - 1
    return steps * FIXED_STEP_METHODS[solver].evaluations + (1 if stride > 1 else 0)


def _plain_teacher(
    velocity: VelocityFn, noise: torch.Tensor, times: np.ndarray, solver: str, record: str
) -> Trajectory:
    """The teacher as a plain loop over ``ode_step`` (validated arguments), finiteness checked once."""
    n = len(times)
    hosts = times.tolist()  # Python floats: the loop never reads a device value
    states = noise.new_empty((n, *noise.shape))
    velocities = noise.new_empty((n - 1, *noise.shape)) if record == "all" else None
    with torch.no_grad():
        states[0].copy_(noise)
        for i in range(n - 1):
            v = evaluate(velocity, states[i], hosts[i])
            if velocities is not None:
                velocities[i].copy_(v)
            ode_step(velocity, states[i], hosts[i], hosts[i + 1], solver, v0=v, out=states[i + 1])
    problem = first_nonfinite_step(states, velocities, times)
    if problem is not None:
        raise ValueError(problem)
    return Trajectory(states=states, velocities=velocities, times=times)


def teacher_trajectory(
    velocity: VelocityFn,
    noise: torch.Tensor,
    times: Sequence[float] | np.ndarray | torch.Tensor,
    solver: str = "euler",
    *,
    record: str = "all",
    mode: str | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> Trajectory:
    """Integrate a batch of noises over the whole grid, keeping every state (and Euler slope).

    Runs under ``torch.no_grad()``; one model evaluation per step for Euler (2 for Heun, 4 for RK4), none at
    the last time. Memory: the (N, B, ...) states (and (N - 1, B, ...) velocities) in the noise's dtype on
    its device, nothing else that grows with N.

    Args:
        velocity: ``velocity(x, t)``, see the module docstring.
        noise: (B, ...) floating tensor, the states at ``times[0]``.
        times: (N,) strictly increasing grid in [0, 1], N >= 2.
        solver: "euler" (the BOSS reference), "heun", "rk4", or "dopri5": torchdiffeq's adaptive
            Dormand-Prince solver evaluated at every grid time, a reference solution (then the velocities
            are one extra batched evaluation per grid time).
        rtol, atol: dopri5's tolerances (default 1e-5 each); an error for the fixed-step solvers.
        record: "all" (states and velocities) or "states" (halves the memory; no cost matrix then).
        mode: None (default) runs the plain loop above; "eager", "compile", "cuda_graph" or "auto" runs a
            :class:`boss_fast.sampler.TeacherRecorder` (static buffers, one CUDA graph for the whole grid
            with "cuda_graph"). "eager" gives the same bits as None; "compile" unrolls the N - 1 steps into
            one graph (its compile time grows with N). Build a ``TeacherRecorder(..., record=record)``
            yourself to reuse one captured graph over many batches of the same shape.

    Raises:
        ValueError/TypeError on bad input, on a velocity output of the wrong shape, dtype or device, or on
        non-finite values (naming the grid time where they first appeared; checked once at the end).

    Example:
        >>> traj = teacher_trajectory(lambda x, t: torch.ones_like(x), torch.zeros(2, 3), [0.0, 0.5, 1.0])
        >>> traj.states[-1]
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """
    t = as_times(times)
    noise = check_noise(noise)
    solver = check_teacher(solver, mode)
    record = check_choice(record, RECORDS, "record")
    if solver != "dopri5" and (rtol is not None or atol is not None):
        raise ValueError(f"rtol and atol are dopri5's tolerances; solver {solver!r} takes fixed steps")
    if solver == "dopri5":
        return _dopri5_trajectory(velocity, noise, t, record, rtol, atol)
    if mode is not None:
        return TeacherRunner(velocity, t, solver, mode, record)(noise)
    return _plain_teacher(velocity, noise, t, solver, record)


def _odeint_dopri5(
    velocity: VelocityFn, noise: torch.Tensor, times: np.ndarray, rtol: float | None, atol: float | None
) -> torch.Tensor:
    """(N, B, ...) dopri5 states at ``times`` (torchdiffeq), under no_grad, with a clear error on failure."""
    try:
        from torchdiffeq import odeint
    except ImportError as err:
        raise ImportError(
            "solver='dopri5' uses torchdiffeq: pip install 'boss_fast[reference]' (with your torch pin)"
        ) from err
    rtol = 1e-5 if rtol is None else check_float(rtol, "rtol")
    atol = 1e-5 if atol is None else check_float(atol, "atol")
    if rtol <= 0 or atol <= 0:
        raise ValueError(f"rtol and atol must be > 0, got rtol={rtol}, atol={atol}")
    b = noise.shape[0]

    def func(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return check_velocity_output(velocity(x, t.to(x.dtype).expand(b)), x, float(t))

    grid = torch.tensor(times.tolist(), dtype=torch.float64, device=noise.device)
    with torch.no_grad():
        try:
            return odeint(func, noise, grid, method="dopri5", rtol=rtol, atol=atol)
        except AssertionError as err:  # torchdiffeq's "underflow in dt": a non-finite or stiff velocity
            raise ValueError(f"dopri5 failed ({err}): the velocity is non-finite or too stiff") from err


def _dopri5_trajectory(
    velocity: VelocityFn,
    noise: torch.Tensor,
    times: np.ndarray,
    record: str,
    rtol: float | None,
    atol: float | None,
) -> Trajectory:
    states = _odeint_dopri5(velocity, noise, times, rtol, atol)
    velocities = None
    if record == "all":
        velocities = torch.empty_like(states[:-1])
        with torch.no_grad():
            for i, t in enumerate(times[:-1].tolist()):
                velocities[i].copy_(evaluate(velocity, states[i], t))
    problem = first_nonfinite_step(states, velocities, times)
    if problem is not None:
        raise ValueError(problem)
    return Trajectory(states=states, velocities=velocities, times=times)


def reference_solution(
    velocity: VelocityFn,
    noise: torch.Tensor,
    t0: float = 0.0,
    t1: float = 1.0,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> torch.Tensor:
    """The state at ``t1`` from ``noise`` at ``t0`` by torchdiffeq's adaptive dopri5: the reference for error
    measurements (e.g. ``metrics.endpoint_rmse(bf.sample(model, noise, sched), reference_solution(model,
    noise))``). Needs torchdiffeq (``pip install 'boss_fast[reference]'``).

    Raises:
        ValueError: t0 >= t1 or outside [0, 1], non-positive tolerances, bad noise, a velocity output of
            the wrong shape or dtype, or non-finite values.

    Example:
        >>> x = reference_solution(lambda x, t: 3 * t[:, None] ** 2 * torch.ones_like(x), torch.zeros(2, 1))
        >>> round(float(x[0]), 4)
        1.0
    """
    noise = check_noise(noise)
    times = as_times([check_float(t0, "t0"), check_float(t1, "t1")], "t0, t1")
    return _dopri5_trajectory(velocity, noise, times, "states", rtol, atol).states[-1]


def seeded_noise(
    shape: Sequence[int],
    start: int,
    stop: int,
    *,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Samples ``start .. stop - 1`` of a reproducible stream of standard Gaussian noises.

    Sample m is drawn on the CPU from its own ``torch.Generator`` seeded from (seed, m) through
    ``numpy.random.SeedSequence``, so the noise does not depend on how the stream is cut into batches, on the
    device, or on the number of processes. It is drawn in float64 for float64, else in float32 and then
    rounded to ``dtype``. Costs one generator seeding per sample (microseconds).

    Returns:
        (stop - start, *shape) tensor of ``dtype`` (default: torch's default dtype) on ``device``.

    Example:
        >>> a, b = seeded_noise((2,), 0, 4, seed=1), seeded_noise((2,), 2, 4, seed=1)
        >>> a.shape, torch.equal(a[2:], b)  # sample m depends only on (seed, m)
        (torch.Size([4, 2]), True)
    """
    shape = tuple(check_int(s, "shape entry") for s in shape)
    start = check_int(start, "start", minimum=0)
    stop = check_int(stop, "stop", minimum=start)
    seed = check_int(seed, "seed", minimum=0)
    dtype = dtype or torch.get_default_dtype()
    draw = torch.float64 if dtype == torch.float64 else torch.float32
    out = torch.empty((stop - start, *shape), dtype=draw)
    for m in range(start, stop):
        key = int(np.random.SeedSequence([seed, m]).generate_state(1, np.uint64)[0])
        generator = torch.Generator().manual_seed(key)
        out[m - start] = torch.randn(shape, generator=generator, dtype=draw)
    return out.to(device=device, dtype=dtype)
