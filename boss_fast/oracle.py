"""An oracle for schedule searches: coordinate descent on the endpoint error over grid schedules.

It answers "how far is this schedule from the best one on its grid?": the demo's oracle rows and the
benchmarks use it to show how much any schedule on a grid could gain.

The error of a K-step Euler schedule ``grid[indices]`` on noises with known reference endpoints is the mean
over samples of ``||sample(velocity, noise, times) - reference||^2`` (summed over a sample's elements,
float64). Coordinate descent moves one interior knot at a time to the grid point between
its neighbours that lowers that error most, sweeping until no move helps (a local optimum of the endpoint
error over grid schedules; fit it on other noises than those it is judged on).

    from boss_fast.oracle import coordinate_descent, endpoint_error, oracle
    best = coordinate_descent(model, fit_noise, fit_reference, grid, steps=4, init=sched.indices)
    best.indices, best.error, best.evaluations
    runs, chosen = oracle(model, fit_noise, fit_reference, grid, 4, {"uniform": None, "global": idx})

With a free start rule (``start="noise"`` or ``"scaled"``, ``boss_fast._validation.START_RULES``) the first
knot moves too, over every grid point below the second knot, the sampler starting there from the rule's state
(``boss_fast.ode.start_state``): the headroom of a search whose start is free.

Coordinate descent stops in a local optimum that depends on where it starts; :func:`oracle` runs it from each
given start and keeps the one that ends lower on the fit noises. Each call costs about
``sweeps * K * N`` K-step samplings of the fit noises (N grid points), so fit on tens to hundreds of noises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from boss_fast._validation import START_RULES, as_times, check_choice, check_int, check_noise
from boss_fast.ode import VelocityFn, sample, start_state

__all__ = ["OracleResult", "coordinate_descent", "endpoint_error", "oracle", "uniform_indices"]


@dataclass(frozen=True)
class OracleResult:
    """indices: (K + 1,) int64 into the grid; error: its mean squared endpoint error on the fit noises;
    evaluations: model evaluations per noise spent by the search; sweeps: full sweeps run."""

    indices: np.ndarray
    error: float
    evaluations: int
    sweeps: int


def endpoint_error(
    velocity: VelocityFn,
    noise: torch.Tensor,
    reference: torch.Tensor,
    times: Sequence[float] | np.ndarray,
    start: str = "noise",
) -> float:
    """Mean over samples of the squared L2 endpoint error of the Euler sampler on ``times`` (float64), from
    ``start_state(noise, start, times[0])`` (default: the noise itself).

    Example:
        >>> flow = lambda x, t: torch.ones_like(x)  # x(1) = x(0) + 1 exactly, for any schedule
        >>> noise = torch.zeros(3, 2, dtype=torch.float64)
        >>> endpoint_error(flow, noise, noise + 1, [0.0, 0.3, 1.0])
        0.0
    """
    _check_pair(noise, reference)
    times = np.asarray(times, dtype=np.float64)
    x = sample(velocity, start_state(noise, start, float(times[0])), times)  # plain times: from that state
    diff = (x.to(torch.float64) - reference.to(torch.float64)).reshape(x.shape[0], -1)
    return float(diff.square().sum(dim=1).mean())


def uniform_indices(n: int, steps: int) -> np.ndarray:
    """The grid indices closest to uniform steps on a grid of n points (strictly increasing).

    Example:
        >>> uniform_indices(11, 4).tolist()
        [0, 2, 5, 8, 10]
    """
    n, steps = check_int(n, "n", minimum=2), check_int(steps, "steps")
    idx = np.round(np.linspace(0, n - 1, steps + 1)).astype(np.int64)
    if np.any(np.diff(idx) <= 0):
        raise ValueError(f"a grid of {n} points cannot hold {steps} distinct steps")
    return idx


def coordinate_descent(
    velocity: VelocityFn,
    noise: torch.Tensor,
    reference: torch.Tensor,
    grid: Sequence[float] | np.ndarray,
    steps: int,
    *,
    init: Sequence[int] | np.ndarray | None = None,
    window: int | None = None,
    max_sweeps: int = 20,
    start: str = "zero",
) -> OracleResult:
    """Coordinate descent on the endpoint error over ``steps``-step schedules on ``grid``.

    Args:
        velocity: ``velocity(x, t)``; noise: (M, ...) start points at ``grid[0]``; reference: (M, ...) their
            reference endpoints at ``grid[-1]`` (e.g. ``reference_solution``).
        grid: (N,) increasing times; steps: K, 1 <= K <= N - 1.
        init: (K + 1,) starting indices (default ``uniform_indices``).
        window: try only positions within this many grid points of a knot's current one (default: every
            position between its neighbours, the exhaustive coordinate search).
        max_sweeps: stop after this many sweeps over the knots even if moves still help.
        start: the start rule: "zero" keeps the first knot at grid point 0; "noise" and "scaled" move it
            too (from the rule's start state there).

    The states before the knot being moved are computed once per move, so trying a position costs the
    remaining steps only; ``evaluations`` counts model evaluations per noise.

    Raises:
        TypeError / ValueError: naming the argument: noise or reference not a floating (M, ...) tensor or of
        different shapes, a grid that is not increasing inside [0, 1], steps outside 1 .. N - 1, an init that
        is not K + 1 increasing indices to N - 1 (from 0 for start "zero"), window or max_sweeps below 1, an
        unknown start rule.

    Example:
        >>> flow = lambda x, t: 3 * t.view(-1, 1) ** 2 * torch.ones_like(x)  # x(1) = x(0) + 1; Euler errs
        >>> noise = torch.zeros(4, 1, dtype=torch.float64)
        >>> best = coordinate_descent(flow, noise, noise + 1, [0.0, 0.25, 0.5, 0.75, 1.0], 2)
        >>> best.indices.tolist(), best.error < endpoint_error(flow, noise, noise + 1, [0.0, 0.5, 1.0])
        ([0, 3, 4], True)
    """
    grid = as_times(grid, "grid")
    steps = check_int(steps, "steps", maximum=len(grid) - 1)
    _check_pair(noise, reference)
    window = None if window is None else check_int(window, "window")
    max_sweeps = check_int(max_sweeps, "max_sweeps")
    rule = check_choice(start, START_RULES, "start")
    idx = _initial_indices(init, len(grid), steps, pinned=rule == "zero")
    best = endpoint_error(velocity, noise, reference, grid[idx], rule)
    evaluations = steps
    sweeps = 0
    while sweeps < max_sweeps:
        sweeps += 1
        moved = False
        for m in range(0 if rule != "zero" else 1, steps):
            lo, hi = (idx[m - 1] + 1 if m else 0), idx[m + 1] - 1
            if window is not None:
                lo, hi = max(lo, idx[m] - window), min(hi, idx[m] + window)
            # From the state at knot m - 1 (computed once per move): a trial runs the remaining steps only.
            prefix = _state_at(velocity, noise, grid[idx[:m]], rule)
            evaluations += max(m - 1, 0)
            for p in range(lo, hi + 1):
                if p == idx[m]:
                    continue
                trial = np.concatenate([idx[max(m - 1, 0) : m], [p], idx[m + 1 :]])
                err = endpoint_error(velocity, prefix, reference, grid[trial], rule if m == 0 else "noise")
                evaluations += len(trial) - 1
                if err < best:
                    best, idx, moved = err, idx.copy(), True
                    idx[m] = p
        if not moved:
            break
    return OracleResult(indices=idx, error=best, evaluations=evaluations, sweeps=sweeps)


def oracle(
    velocity: VelocityFn,
    noise: torch.Tensor,
    reference: torch.Tensor,
    grid: Sequence[float] | np.ndarray,
    steps: int,
    starts: dict[str, Sequence[int] | np.ndarray | None],
    *,
    window: int | None = None,
    max_sweeps: int = 20,
    start: str = "zero",
) -> tuple[dict[str, OracleResult], str]:
    """:func:`coordinate_descent` from each of ``starts`` ({name: init indices, None for uniform steps}),
    with the start rule ``start``; returns every run and the name of the one with the lowest error on the
    fit noises.

    Example:
        >>> flow = lambda x, t: 3 * t.view(-1, 1) ** 2 * torch.ones_like(x)
        >>> noise = torch.zeros(4, 1, dtype=torch.float64)
        >>> runs, best = oracle(flow, noise, noise + 1, [0.0, 0.25, 0.5, 0.75, 1.0], 2, {"uniform": None})
        >>> best, runs[best].indices.tolist()
        ('uniform', [0, 3, 4])
    """
    if not isinstance(starts, dict) or not starts:
        raise ValueError(f"starts must be a non-empty dict {{name: init indices or None}}, got {starts!r}")
    runs = {
        name: coordinate_descent(
            velocity,
            noise,
            reference,
            grid,
            steps,
            init=init,
            window=window,
            max_sweeps=max_sweeps,
            start=start,
        )
        for name, init in starts.items()
    }
    return runs, min(runs, key=lambda name: runs[name].error)


def _state_at(velocity: VelocityFn, noise: torch.Tensor, times: np.ndarray, rule: str) -> torch.Tensor:
    """The sampler's state at the last of ``times`` (the knots before the one being moved), from the start
    state at the first; with no knot before it (the start itself moves): the noise."""
    if len(times) == 0:
        return noise
    first = start_state(noise, rule, float(times[0]))
    return first if len(times) == 1 else sample(velocity, first, times)


def _check_pair(noise: object, reference: object) -> None:
    """Noises and their reference endpoints: floating (M, ...) tensors of one shape."""
    check_noise(noise, "noise")
    check_noise(reference, "reference")
    if reference.shape != noise.shape:
        raise ValueError(
            f"reference must have noise's shape {tuple(noise.shape)} (one endpoint per noise), "
            f"got {tuple(reference.shape)}"
        )


def _initial_indices(init: object, n: int, steps: int, pinned: bool = True) -> np.ndarray:
    """``init`` (default: uniform steps) as K + 1 increasing int64 indices to n - 1 (from 0 when the start
    is ``pinned``), or ValueError."""
    if init is None:
        return uniform_indices(n, steps)
    try:
        idx = np.array(init, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise TypeError(f"init must be a sequence of grid indices, got {init!r}") from None
    if (
        idx.shape != (steps + 1,)
        or (idx[0] != 0 if pinned else idx[0] < 0)
        or idx[-1] != n - 1
        or np.any(np.diff(idx) <= 0)
        or np.any(np.asarray(init, dtype=np.float64) != idx)
    ):
        first = "from 0 " if pinned else ""
        raise ValueError(f"init must be {steps + 1} increasing indices {first}to {n - 1}, got {init!r}")
    return idx
