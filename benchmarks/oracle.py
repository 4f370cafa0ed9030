"""An oracle for schedule searches: coordinate descent on the endpoint error over grid schedules.

Not part of the package: benchmarks, tests and the demo's oracle rows use it to show how much any schedule on
a grid could gain. The error of a K-step Euler schedule ``grid[indices]`` on noises with known reference
endpoints is the mean over samples of ``||sample(velocity, noise, times) - reference||^2`` (summed over a
sample's elements, float64). Coordinate descent moves one interior knot at a time to the grid point between
its neighbours that lowers that error most, sweeping until no move helps (a local optimum of the endpoint
error over grid schedules; fit it on other noises than those it is judged on).

    from benchmarks.oracle import coordinate_descent, endpoint_error, oracle
    best = coordinate_descent(model, fit_noise, fit_reference, grid, steps=4, init=sched.indices)
    best.indices, best.error, best.evaluations
    runs, chosen = oracle(model, fit_noise, fit_reference, grid, 4, {"uniform": None, "global": idx})

Coordinate descent stops in a local optimum that depends on where it starts; :func:`oracle` runs it from each
given start and keeps the one that ends lower on the fit noises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from boss_fast.ode import VelocityFn, sample

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
    velocity: VelocityFn, noise: torch.Tensor, reference: torch.Tensor, times: Sequence[float] | np.ndarray
) -> float:
    """Mean over samples of the squared L2 endpoint error of the Euler sampler on ``times`` (float64)."""
    x = sample(velocity, noise, np.asarray(times, dtype=np.float64))
    diff = (x.to(torch.float64) - reference.to(torch.float64)).reshape(x.shape[0], -1)
    return float(diff.square().sum(dim=1).mean())


def uniform_indices(n: int, steps: int) -> np.ndarray:
    """The grid indices closest to uniform steps on a grid of n points (strictly increasing)."""
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

    The states before the knot being moved are computed once per move, so trying a position costs the
    remaining steps only; ``evaluations`` counts model evaluations per noise.
    """
    grid = np.asarray(grid, dtype=np.float64)
    idx = uniform_indices(len(grid), steps) if init is None else np.array(init, dtype=np.int64)
    if len(idx) != steps + 1 or idx[0] != 0 or idx[-1] != len(grid) - 1 or np.any(np.diff(idx) <= 0):
        raise ValueError(f"init must be {steps + 1} increasing indices from 0 to {len(grid) - 1}, got {idx}")
    best = endpoint_error(velocity, noise, reference, grid[idx])
    evaluations = steps
    sweeps = 0
    while sweeps < max_sweeps:
        sweeps += 1
        moved = False
        for m in range(1, steps):
            prefix = noise if m == 1 else sample(velocity, noise, grid[idx[:m]])
            evaluations += m - 1
            lo, hi = idx[m - 1] + 1, idx[m + 1] - 1
            if window is not None:
                lo, hi = max(lo, idx[m] - window), min(hi, idx[m] + window)
            for p in range(lo, hi + 1):
                if p == idx[m]:
                    continue
                trial = np.concatenate([idx[m - 1 : m], [p], idx[m + 1 :]])
                err = endpoint_error(velocity, prefix, reference, grid[trial])
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
) -> tuple[dict[str, OracleResult], str]:
    """:func:`coordinate_descent` from each of ``starts`` ({name: init indices, None for uniform steps});
    returns every run and the name of the one with the lowest error on the fit noises."""
    runs = {
        name: coordinate_descent(
            velocity, noise, reference, grid, steps, init=init, window=window, max_sweeps=max_sweeps
        )
        for name, init in starts.items()
    }
    return runs, min(runs, key=lambda name: runs[name].error)
