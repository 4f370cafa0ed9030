"""A cheaper route to the global objective's schedules: the own-state DP on a coarse grid, then on the fine
grid with each level's sources restricted to windows around the coarse knots.

The full own-state DP (``boss_fast.global_objective``) evaluates the model at every point reached in
k - 1 steps, N - k sources at level k: with a Heun teacher, 200 + 856 = 1056 evaluations per noise for
every K <= 10 on a 100-step grid, 10.6x the local search's 100. ``dp="coarse"`` gets there in about a third:

1. Coarse pass: the full DP on every ``stride``-th grid point (26 points at stride 4), over the first
   ``ceil(coarse_fraction x M)`` noises, its teacher the same solver on that coarse grid. Its K-step paths
   give the knots of every budget, up to the coarse spacing.
2. Fine pass: the DP on the whole grid, where level k may jump only from the points within ``radius`` of
   knot k - 1 of some budget K >= k (the union of those windows; level 1 jumps from the noise when the start
   is pinned, and from the window around every budget's start knot when it is free), and the teacher runs on
   every ``teacher_stride``-th point with the rest interpolated
   (:class:`boss_fast.trajectories.DenseTeacher`).

A free start (``GlobalPass.start`` "noise" or "scaled") is searched in both passes: the coarse pass's level 1
jumps from every coarse point up to the cap, the fine pass's from the windows around the coarse start knots.

Every budget's schedule still comes out of one DP table whose costs are errors at t = 1 against the fine
teacher; only the set of sources is smaller. It is a heuristic: where the coarse knots are off by more than
the window the result can be worse than the full DP. Measured with the defaults on a 100-step grid, every
K <= 10 (benchmarks/results/global_dp_cost.md, held-out RMSE against dopri5 on 1000 noises): digits DiT
(128 noises) 370 model evaluations per noise (3.7x the local search, 0.35x the full DP), RMSE +1.002% from
the full DP's at K = 9 and no worse at the other K (-0.1% at K = 10); ``gmm2d_narrow`` (256 noises) 396
(3.96x), within +1.4% at every K (-2.6% at K = 10). No setting tried (strides 3-5, radius 1-3) kept digits
within 1% at every K alone; followed by the start polish (``boss_fast.polish``) it is no worse than the full
DP without polish at any K on three models, on 256 noises with paired intervals, at 0.50-0.54x its
evaluations (search seed 0, benchmarks/results/search_budget_*.md; and in the mean over ten search seeds,
benchmarks/results/search_seeds_*.md), so it is the global objective's default route.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from boss_fast._validation import check_float, check_int
from boss_fast.global_objective import (
    GlobalPass,
    GlobalTable,
    Restrict,
    accumulate_global,
    global_paths,
    start_sources,
)
from boss_fast.ode import VelocityFn

__all__ = ["DPS", "CoarseToFine", "coarse_to_fine_table", "window_bound", "window_sources"]

# "full": the own-state DP over every reachable source (the reference); "coarse": coarse-to-fine.
DPS = ("full", "coarse")


@dataclass(frozen=True)
class CoarseToFine:
    """Settings of the coarse-to-fine DP (defaults: the measured ones).

    Attributes:
        stride: the coarse grid is every stride-th fine point (and the last), >= 2.
        radius: fine sources within this many grid points of a coarse knot, >= 1 (at stride 5, radius 2
            covers every fine point the coarse knot stands for).
        coarse_fraction: the share of the noises the coarse pass averages over, in (0, 1].
        teacher_stride: the fine teacher's solver runs on every teacher_stride-th point, >= 1.

    Example:
        >>> CoarseToFine().stride, CoarseToFine(radius=3).radius
        (4, 3)
    """

    stride: int = 4
    radius: int = 2
    coarse_fraction: float = 0.35
    teacher_stride: int = 2

    def __post_init__(self) -> None:
        check_int(self.stride, "stride", minimum=2)
        check_int(self.radius, "radius")
        check_int(self.teacher_stride, "teacher_stride")
        fraction = check_float(self.coarse_fraction, "coarse_fraction")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"coarse_fraction must be in (0, 1], got {fraction}")

    def coarse_grid(self, n: int) -> np.ndarray:
        """The coarse pass's grid indices on a fine grid of ``n`` points: every stride-th and the last."""
        return np.unique(np.append(np.arange(0, n, self.stride), n - 1))

    def coarse_samples(self, num_samples: int) -> int:
        """The noises the coarse pass averages over: the first ceil(coarse_fraction x M), at least 1."""
        return max(1, math.ceil(self.coarse_fraction * num_samples))

    def identity(self) -> dict[str, str]:
        """What the fine pass's checkpoint header records of the restriction."""
        return {"dp": "coarse", "dp_settings": repr((self.stride, self.radius, self.coarse_fraction,
                                                      self.teacher_stride))}  # fmt: skip


def window_sources(
    knots: Sequence[np.ndarray], radius: int, n: int, start_cap: int | None = None
) -> dict[int, np.ndarray]:
    """The fine sources allowed at each level from the knots of every budget.

    Args:
        knots: ``knots[K - 1]``: the (K + 1,) fine-grid indices of the K-step path (its start first, n - 1
            last).
        radius: grid points either side of a knot.
        n: fine grid points.
        start_cap: None (a pinned start: level 1 jumps from grid point 0 only, no window), or the last grid
            point a free start may take: level 1 gets the windows around the start knots, clipped to
            [0, start_cap].

    Returns:
        {level: sorted int64 indices} for levels 2 .. max K (and 1 with ``start_cap``): the union over
        budgets K >= level of [knot_{K, level - 1} - radius, knot_{K, level - 1} + radius], clipped to
        [level - 1, n - 2].

    Example:
        >>> window_sources([np.array([0, 9]), np.array([0, 4, 9])], 1, 10)
        {2: array([3, 4, 5])}
    """
    out: dict[int, set[int]] = {}
    for path in knots:
        for level in range(1 if start_cap is not None else 2, len(path)):
            c = int(path[level - 1])
            lo, hi = max(level - 1, c - radius), min(n - 2 if level > 1 else start_cap, c + radius)
            out.setdefault(level, set()).update(range(lo, hi + 1))
    return {level: np.array(sorted(s), dtype=np.int64) for level, s in sorted(out.items())}


def window_bound(level: int, n: int, max_steps: int, radius: int, starts: int = 1) -> int:
    """At most how many sources the fine pass evaluates at ``level`` (model evaluations per noise): at
    level 1 the start (1 when pinned; with ``starts`` allowed start points, the union of the windows around
    the max_steps budgets' start knots within them); after, the union of the windows of the
    max_steps - level + 1 budgets K >= level, 2 radius + 1 points each, within the n - level points reachable
    (fewer where windows overlap or are clipped).

    Example:
        >>> [window_bound(k, 101, 10, 2) for k in (1, 2, 10)], window_bound(1, 101, 10, 2, starts=100)
        ([1, 45, 5], 50)
    """
    if level == 1:
        return 1 if starts == 1 else min(starts, max_steps * (2 * radius + 1))
    return min(n - level, (max_steps - level + 1) * (2 * radius + 1))


def _restrict(windows: dict[int, np.ndarray]) -> Restrict:
    """``restrict(level, costs, pointers)`` for ``accumulate_global``: the level's window, less the points
    the previous level did not reach (level 1: a free start's window, every point of it a start); every
    reachable source where no window applies."""

    def restrict(level: int, costs: np.ndarray, pointers: np.ndarray) -> np.ndarray | None:
        window = windows.get(level)
        if window is None or level == 1:
            return window
        reached = window[pointers[level - 1][window] >= 0]
        return reached if reached.size else None  # nothing reached: all sources (the full level)

    return restrict


def coarse_to_fine_table(
    velocity: VelocityFn,
    make_batch: Callable[[int, int], torch.Tensor],
    num_samples: int,
    grid: np.ndarray,
    max_steps: int,
    run: GlobalPass,
    *,
    plan: CoarseToFine,
    device: torch.device | str | None,
    progress: bool,
    checkpoint: str | os.PathLike | None,
    identity: dict[str, str],
    keep_endpoints: bool = False,
) -> GlobalTable:
    """The coarse-to-fine DP's table on ``grid`` (see the module docstring).

    Arguments as ``accumulate_global``. Both passes run with ``run``'s batch size, metric, mode and store and
    its solver as the teacher; the coarse pass's teacher steps on every coarse point, the fine pass's on every
    ``plan.teacher_stride``-th fine point (``run.teacher_stride`` is not used). With ``checkpoint`` the
    coarse pass checkpoints beside it (``<root>.coarse<ext>``) and the fine pass at ``checkpoint``, its
    header naming ``plan``. ``keep_endpoints``: as ``accumulate_global``'s, of the fine pass's teacher.

    Example:
        >>> grid = np.linspace(0, 1, 21)
        >>> table = coarse_to_fine_table(lambda x, t: -x, lambda a, b: torch.ones(b - a, 2), 8, grid, 3,
        ...     GlobalPass(batch_size=8), plan=CoarseToFine(), device=None, progress=False, checkpoint=None,
        ...     identity={})
        >>> [p.indices.tolist()[-1] for p in global_paths(table)]
        [20, 20, 20]
    """
    n = len(grid)
    sub = plan.coarse_grid(n)
    coarse_steps = min(max_steps, len(sub) - 1)
    # A free start: the fine cap, and on the coarse grid the last coarse point at or below it.
    cap = None if run.start == "zero" else int(start_sources(run.start, n, run.start_cap)[-1])
    coarse_cap = None if cap is None else min(int(np.searchsorted(sub, cap, side="right")) - 1, len(sub) - 2)
    coarse_samples = plan.coarse_samples(num_samples)
    coarse_ckpt = None
    if checkpoint is not None:
        root, ext = os.path.splitext(os.fspath(checkpoint))
        coarse_ckpt = f"{root}.coarse{ext}"
    handles = {"device": device, "progress": progress}
    coarse = accumulate_global(
        velocity, make_batch, coarse_samples, grid[sub], coarse_steps,
        replace(run, teacher_stride=1, start_cap=coarse_cap),
        checkpoint=coarse_ckpt, identity={**identity, "dp": "coarse pass"}, **handles,
    )  # fmt: skip
    knots = [sub[path.indices] for path in global_paths(coarse)]
    windows = window_sources(knots, plan.radius, n, cap)
    return accumulate_global(
        velocity, make_batch, num_samples, grid, max_steps, replace(run, teacher_stride=plan.teacher_stride),
        checkpoint=checkpoint, identity={**identity, **plan.identity()}, restrict=_restrict(windows),
        keep_endpoints=keep_endpoints, **handles,
    )  # fmt: skip
