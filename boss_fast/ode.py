"""The ODE layer: the one Euler update, the table of fixed-step methods, one step, and the reference loop.

Conventions: t in [0, 1], t = 0 noise, t = 1 data, dx/dt = v(x, t). A velocity model is any callable
``velocity(x, t)`` with x of shape (B, ...) and t a (B,) tensor of x's dtype and device, returning a tensor
shaped and typed like x.

``euler_update`` (x + h v) is the one Euler update in the package: the teacher, :func:`sample`, the
``Sampler`` (through the kernels, whose reference it is) and the straightening data all advance states
through it, so a few-step sampler reproduces the teacher bit for bit when it is given the teacher's grid.
Every fixed-step method is one entry of :data:`FIXED_STEP_METHODS`: its stages are Euler updates from the
state with the previous stage's slope, and a final Euler update with the combined slope.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from boss_fast._validation import (
    START_RULES,
    STEP_SOLVERS,
    check_choice,
    check_noise,
    check_scale,
    check_velocity_output,
    schedule_start,
    schedule_times,
)

__all__ = [
    "FIXED_STEP_METHODS",
    "CFGPair",
    "FixedStepMethod",
    "GuidedVelocity",
    "Trajectory",
    "VelocityFn",
    "cfg_combine",
    "cfg_pair",
    "euler_update",
    "evaluate",
    "first_nonfinite_step",
    "for_rows",
    "guided_velocity",
    "is_cfg_pair",
    "ode_step",
    "sample",
    "stage_times",
    "start_state",
]

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Trajectory:
    """A batch of trajectories on a grid.

    Attributes:
        states: (N, B, ...) in the noise's dtype and device; ``states[i]`` is the state at ``times[i]``,
            ``states[0]`` the noise.
        velocities: (N - 1, B, ...) with ``velocities[i] = velocity(states[i], times[i])``, the slope of an
            Euler jump from grid point i whatever solver produced the states; None with ``record="states"``.
            There is none for the last time: no jump starts there, and skipping it saves one evaluation.
        times: (N,) float64 grid.
    """

    states: torch.Tensor
    velocities: torch.Tensor | None
    times: np.ndarray


@dataclass(frozen=True)
class FixedStepMethod:
    """An explicit fixed-step method whose stage s + 1 is evaluated at ``x + fractions[s] * h * k_s`` and time
    ``t0 + fractions[s] * h`` (k_0 = velocity(x, t0)); the step is ``x + h * combine([k_0, k_1, ...])``.

    Attributes:
        fractions: one entry per stage after the first; 1.0 means the stage sits at t1 exactly.
        combine: the slopes -> the step's slope, written once for every caller (same float operations, so
            every caller gets the same bits).
    """

    name: str
    fractions: tuple[float, ...]
    combine: Callable[[Sequence[torch.Tensor]], torch.Tensor]

    @property
    def evaluations(self) -> int:
        """Model evaluations per step."""
        return 1 + len(self.fractions)


def _heun(k: Sequence[torch.Tensor]) -> torch.Tensor:
    return (k[0] + k[1]) * 0.5


def _rk4(k: Sequence[torch.Tensor]) -> torch.Tensor:
    return (k[0] + 2.0 * (k[1] + k[2]) + k[3]) * (1.0 / 6.0)


# Euler (what BOSS optimises for); Heun, the explicit trapezoid rule (order 2); classical RK4 (order 4).
FIXED_STEP_METHODS: dict[str, FixedStepMethod] = {
    "euler": FixedStepMethod("euler", (), lambda k: k[0]),
    "heun": FixedStepMethod("heun", (1.0,), _heun),
    "rk4": FixedStepMethod("rk4", (0.5, 0.5, 1.0), _rk4),
}


def stage_times(method: FixedStepMethod, t0: float, t1: float) -> tuple[float, ...]:
    """Host times of the method's stages for the step t0 -> t1 (the first is t0)."""
    h = t1 - t0
    return (t0, *(t1 if c == 1.0 else t0 + c * h for c in method.fractions))


def euler_update(
    x: torch.Tensor, v: torch.Tensor, h: float, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """One Euler update ``x + h * v`` in x's dtype; ``h`` is a host float (no device sync).

    Args:
        x, v: tensors of the same shape, dtype and device.
        h: step size in flow time (t_next - t), a Python float.
        out: optional destination (e.g. the next row of a preallocated trajectory).

    Example:
        >>> euler_update(torch.zeros(2), torch.ones(2), 0.25)
        tensor([0.2500, 0.2500])
    """
    return torch.add(x, v, alpha=h, out=out)


def evaluate(velocity: VelocityFn, x: torch.Tensor, t: float) -> torch.Tensor:
    """Call the model at host time ``t`` (broadcast to a (B,) tensor) and check its output's metadata."""
    tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
    return check_velocity_output(velocity(x, tt), x, t)


def for_rows(velocity: VelocityFn, rows: torch.Tensor) -> VelocityFn:
    """The velocity that noise rows ``rows`` see: the seam for a bank of conditionings (prompts).

    A velocity with a ``for_rows(rows)`` method holds a bank of P conditionings and pairs noise row m (its
    index in the whole set of noises a search or straightening draws, not in a batch) with conditioning
    m mod P; ``rows`` is an int64 (B,) tensor of those indices for a batch of B states, and the method returns
    a plain ``velocity(x, t)`` for that batch. The pairing depends on the row only, so any batching, any rank
    count and any call width give every noise the same conditioning. Any other velocity is returned as is.

    Example:
        >>> v = lambda x, t: -x
        >>> for_rows(v, torch.arange(3)) is v
        True
    """
    pick = getattr(velocity, "for_rows", None)
    return velocity if pick is None else pick(rows)


def start_state(noise: torch.Tensor, rule: str, t0: float) -> torch.Tensor:
    """The state sampling starts from at a schedule's first time ``t0``, by its start ``rule``
    (``boss_fast._validation.START_RULES``): the noise itself ("zero", "noise"; no copy), or
    ``(1 - t0) * noise`` ("scaled": ComfyUI's flow models from an empty latent).

    Example:
        >>> start_state(torch.ones(1, 2), "scaled", 0.25).tolist(), start_state(torch.ones(1), "noise", 0.5)
        ([[0.75, 0.75]], tensor([1.]))
    """
    if check_choice(rule, START_RULES, "start rule") == "scaled":
        return noise * (1.0 - t0)
    return noise


def ode_step(
    velocity: VelocityFn,
    x: torch.Tensor,
    t0: float,
    t1: float,
    solver: str = "euler",
    *,
    v0: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Advance x from host time t0 to t1 with one step of ``solver`` ("euler", "heun" or "rk4").

    ``v0 = velocity(x, t0)`` may be passed when the caller already has it (the teacher keeps it). The method
    is :data:`FIXED_STEP_METHODS`' entry; it ends in ``euler_update`` with the combined slope. x must be a
    valid state (this does not check it); an unknown solver raises ValueError.

    Example:
        >>> velocity = lambda x, t: 2 * t[:, None] * torch.ones_like(x)  # x(t) = t^2: Heun is exact
        >>> float(ode_step(velocity, torch.zeros(1, 1), 0.0, 1.0, "heun"))
        1.0
    """
    method = FIXED_STEP_METHODS[check_choice(solver, STEP_SOLVERS, "solver")]
    h = t1 - t0
    times = stage_times(method, t0, t1)
    slopes = [evaluate(velocity, x, t0) if v0 is None else v0]
    for s, c in enumerate(method.fractions, start=1):
        slopes.append(evaluate(velocity, euler_update(x, slopes[-1], c * h), times[s]))
    return euler_update(x, method.combine(slopes), h, out=out)


# ------------------------------------------------------------------------------ classifier-free guidance


def cfg_combine(v_uncond: torch.Tensor, v_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): ``v_uncond + scale * (v_cond - v_uncond)``.

    Arithmetic in float32 for reduced-precision inputs (float64 stays float64); the result is in that
    compute dtype. The one combine in the package: :func:`guided_velocity`, the Euler kernel's reference
    (``boss_fast.kernels.euler_step_reference`` with ``guidance``) and ``TeacherRecorder(guidance=)``'s
    recorded slopes all call it, so they agree bit for bit. ``scale`` is one finite host number (a tensor, a
    bool, NaN or an infinity is refused: :func:`boss_fast._validation.check_scale`, the package's one
    guidance check); ``v_uncond`` and ``v_cond`` must be tensors of one shape (no broadcasting: halves of
    batches 4 and 3 are two models' outputs that do not pair up), else a ValueError naming both shapes.

    Example:
        >>> cfg_combine(torch.zeros(2), torch.ones(2), 4.5)
        tensor([4.5000, 4.5000])
    """
    scale = check_scale(scale, "scale")
    _check_halves(v_uncond, v_cond)
    dtype = torch.promote_types(v_uncond.dtype, torch.float32)
    vu = v_uncond.to(dtype)
    return vu + scale * (v_cond.to(dtype) - vu)


class GuidedVelocity(nn.Module):
    """``velocity(x, t) = v_uncond + scale * (v_cond - v_uncond)`` from two velocity callables
    (:func:`guided_velocity`). Module callables become submodules (so ``model_fingerprint``, ``.to`` and
    the search's device/dtype defaults see them); ``scale`` is a public attribute (fingerprinted)."""

    def __init__(self, v_cond: VelocityFn, v_uncond: VelocityFn, scale: float) -> None:
        super().__init__()
        _check_callables(v_cond=v_cond, v_uncond=v_uncond)
        self.v_cond, self.v_uncond, self.scale = v_cond, v_uncond, check_scale(scale, "scale")

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return cfg_combine(self.v_uncond(x, t), self.v_cond(x, t), self.scale).to(x.dtype)


def guided_velocity(v_cond: VelocityFn, v_uncond: VelocityFn, scale: float) -> GuidedVelocity:
    """The classifier-free-guided velocity ``v_u + scale (v_c - v_u)`` as a plain ``velocity(x, t)``.

    Search on it (``optimal_schedules(guided, shape, K)``) for the schedule of the guided sampler, and
    sample it with ``sample``/``Sampler``; ``Sampler(cfg_pair(v_cond, v_uncond), sched, guidance=scale)``
    steps the same field from one doubled batch (bit for bit with Euler in float32 and float64).

    Example:
        >>> g = guided_velocity(lambda x, t: torch.ones_like(x), lambda x, t: torch.zeros_like(x), 3.0)
        >>> g(torch.zeros(1, 2), torch.zeros(1))
        tensor([[3., 3.]])
    """
    return GuidedVelocity(v_cond, v_uncond, scale)


class CFGPair(nn.Module):
    """``Sampler(guidance=)``'s protocol from two velocity callables: called on a doubled batch [x; x] of
    (2B, ...) with t (2B,), returns [v_uncond(x, t); v_cond(x, t)] (unconditional half first, diffusers'
    order). ``doubled_batch = True`` is the protocol's opt-in flag (:func:`is_cfg_pair`)."""

    doubled_batch = True

    def __init__(self, v_cond: VelocityFn, v_uncond: VelocityFn) -> None:
        super().__init__()
        _check_callables(v_cond=v_cond, v_uncond=v_uncond)
        self.v_cond, self.v_uncond = v_cond, v_uncond

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[0] % 2:
            raise ValueError(f"a CFG pair takes a doubled batch [x; x] (even), got batch {x.shape[0]}")
        b = x.shape[0] // 2
        return torch.cat([self.v_uncond(x[:b], t[:b]), self.v_cond(x[b:], t[b:])])


def cfg_pair(v_cond: VelocityFn, v_uncond: VelocityFn) -> CFGPair:
    """The doubled-batch model ``Sampler(model, sched, guidance=w)`` takes, from two velocity callables.

    Example:
        >>> pair = cfg_pair(lambda x, t: torch.ones_like(x), lambda x, t: torch.zeros_like(x))
        >>> pair(torch.zeros(4, 1), torch.zeros(4)).flatten()  # [x; x] -> [v_uncond; v_cond]
        tensor([0., 0., 1., 1.])
    """
    return CFGPair(v_cond, v_uncond)


def is_cfg_pair(model: object) -> bool:
    """Whether ``model`` follows ``Sampler(guidance=)``'s doubled-batch protocol: it says so with
    ``doubled_batch = True`` (:class:`CFGPair` does; so does ``DiffusersVelocity(negative=...)`` without a
    ``guidance_scale``). A plain ``velocity(x, t)`` would return [v; v] on [x; x], and guiding it would
    silently sample the unguided field, so ``Sampler(guidance=)`` refuses a model without the flag.

    Example:
        >>> is_cfg_pair(cfg_pair(lambda x, t: x, lambda x, t: -x)), is_cfg_pair(lambda x, t: -x)
        (True, False)
    """
    return getattr(model, "doubled_batch", False) is True


def _check_callables(**velocities: object) -> None:
    """Refuse, by argument name, any of ``velocities`` that is not a callable ``velocity(x, t)``."""
    for name, fn in velocities.items():
        if not callable(fn):
            raise TypeError(f"{name} must be callable as velocity(x, t), got {type(fn).__name__} {fn!r}")


def _check_halves(v_uncond: object, v_cond: object) -> None:
    """The two halves of a CFG combine: tensors of one shape (metadata only: no device read, compile-safe)."""
    for name, v in (("v_uncond", v_uncond), ("v_cond", v_cond)):
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    if v_uncond.shape != v_cond.shape:
        raise ValueError(
            f"cfg_combine takes v_uncond and v_cond of one shape (the unconditional and conditional "
            f"velocities of the same states), got {tuple(v_uncond.shape)} and {tuple(v_cond.shape)}"
        )


def first_nonfinite_step(
    states: torch.Tensor, velocities: torch.Tensor | None, times: np.ndarray
) -> str | None:
    """Describe the first non-finite value of a trajectory, or None if all are finite.

    Reads the whole trajectory once and syncs once (one host read of 2N flags), instead of a sync per step.
    """
    flat = states.reshape(states.shape[0], -1)
    bad_x = ~torch.isfinite(flat).all(dim=1)
    if velocities is not None:
        bad_v = ~torch.isfinite(velocities.reshape(velocities.shape[0], -1)).all(dim=1)
        flags = torch.cat([bad_x, bad_v]).cpu().numpy()
        bad_x_h, bad_v_h = flags[: len(bad_x)], flags[len(bad_x) :]
    else:
        bad_x_h, bad_v_h = bad_x.cpu().numpy(), np.zeros(0, dtype=bool)
    if bad_x_h[0]:
        return "noise contains non-finite values"
    t = times.tolist()  # Python floats print plainly in the messages
    for i in range(len(t) - 1):
        if i < len(bad_v_h) and bad_v_h[i]:
            return f"velocity returned non-finite values at t = {t[i]!r} (grid index {i})"
        if bad_x_h[i + 1]:
            return (
                f"the step from t = {t[i]!r} to t = {t[i + 1]!r} (grid index {i}) produced "
                "non-finite states: the velocity returned non-finite values inside the step"
            )
    return None


def sample(
    velocity: VelocityFn,
    noise: torch.Tensor,
    schedule: object,
    solver: str = "euler",
    *,
    grad: bool = False,
    check_finite: bool = True,
) -> torch.Tensor:
    """Run the K-step sampler from the start state at ``times[0]`` to ``times[-1]``; return the last state.

    The start state is :func:`start_state` of ``noise`` by the schedule's start rule (``Schedule.start``;
    plain times: the noise itself). The reference integrator: a plain loop over :func:`ode_step`. Times are
    host floats read once before the loop: nothing inside it reads a device value (the finiteness flags are
    read once, after the loop).

    Args:
        velocity: ``velocity(x, t)``, t = 0 noise, t = 1 data.
        noise: (B, ...) floating tensor; the state at the first time is ``start_state(noise, rule, times[0])``
            (the noise itself unless the schedule's rule is "scaled"); the result has its dtype and device.
        schedule: a ``Schedule`` (anything with ``times``) or its times (a sequence, numpy array or tensor,
            strictly increasing in [0, 1]). K = len(times) - 1 steps; NFE = K for Euler, 2K for Heun, 4K
            for RK4.
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
    times = schedule_times(schedule)
    rule = schedule_start(schedule)
    noise = check_noise(noise)
    solver = check_choice(solver, STEP_SOLVERS, "solver")
    hosts = times.tolist()  # Python floats: the loop below never reads a device value
    flags = []
    with nullcontext() if grad else torch.no_grad():
        x = start_state(noise, rule, hosts[0])
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
