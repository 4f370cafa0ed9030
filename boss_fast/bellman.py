"""Bellman-optimal step schedules: the exact dynamic program over a cost matrix (BOSS stage 1, step 4).

Given ``cost[i, j]`` (i < j), the cost of one step from grid point i to grid point j, find the path
``0 = i_0 < i_1 < ... < i_K = N - 1`` minimising ``sum_m discount**m * cost[i_m, i_{m+1}]`` (Nguyen et al.,
"Bellman Optimal Step-size Straightening of Flow-Matching Models", ICLR 2024; the discount is GITS's,
Chen et al., ICML 2024). With ``V[k][i]`` the least cost from i to N - 1 in exactly k steps::

    V[1][i] = cost[i, N-1]
    V[k][i] = min_{i < j <= N-k} cost[i, j] + discount * V[k-1][j]

so one table answers every budget k <= K (a k-step path's steps are weighted 1, d, d^2, ... from its start,
whatever K is). The table keeps argmin pointers (the smallest next index on ties, in every backend);
backtracking follows them and never compares floats. O(N^2 K) time, O(N K) memory.

The table holds V[k][i] for every start i, not only 0, so a free start is one more argmin: with
``start_costs`` e0[j] (the error of starting at grid point j, ``boss_fast.cost.start_cost_sums``; +inf where
a start is not allowed) the k-step path starts at argmin_j e0[j] + V[k][j] (the smallest j on ties) and
costs that sum. Without them (the start pinned at 0) nothing changes, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from boss_fast._backends import dp_kernel
from boss_fast._validation import check_int

__all__ = ["BellmanPath", "bellman_path", "bellman_paths", "bellman_table_reference"]


@dataclass(frozen=True)
class BellmanPath:
    """The least-cost path through the grid for one step budget.

    Attributes:
        indices: int64 array of length ``steps + 1``, strictly increasing to N - 1 (from 0 unless the start
            is free).
        cost: the path's total (discounted) cost.
    """

    indices: np.ndarray
    cost: float

    @property
    def steps(self) -> int:
        return len(self.indices) - 1


def bellman_table_reference(
    cost: np.ndarray, max_steps: int, discount: float = 1.0
) -> tuple[np.ndarray, np.ndarray, int]:
    """The NumPy reference of the Bellman table: the spec the compiled backends are tested against.

    Args:
        cost: (N, N) C-contiguous float64; only the strict upper triangle is read.
        max_steps: K, 1 <= K <= N - 1.
        discount: d > 0.

    Returns:
        value: (K + 1, N) float64; ``value[k, i]`` is the least cost from i to N - 1 in exactly k steps,
            +inf where no such path exists (row 0, and i + k > N - 1).
        next: (K + 1, N) int64; the argmin next index of ``value[k, i]`` (smallest on ties); unspecified
            where ``value`` is not finite (no path, or an overflowed sum).
        bad_row: -1 if the upper triangle is finite, else the first (smallest) row i holding a NaN or +-inf.
    """
    n = cost.shape[0]
    upper = np.triu(np.isfinite(cost), 1) | np.tril(np.ones((n, n), dtype=bool))
    bad_rows = np.flatnonzero(~upper.all(axis=1))
    value = np.full((max_steps + 1, n), np.inf)
    nxt = np.full((max_steps + 1, n), -1, dtype=np.int64)
    value[1, : n - 1] = cost[: n - 1, n - 1]
    nxt[1, : n - 1] = n - 1
    scaled = discount * value  # rounded once, as every backend does
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowed path is reported by the caller
        _fill(cost, max_steps, discount, value, nxt, scaled)
    return value, nxt, int(bad_rows[0]) if bad_rows.size else -1


def _fill(cost, max_steps, discount, value, nxt, scaled) -> None:
    n = cost.shape[0]
    for i in range(n - 2, -1, -1):
        for k in range(2, min(max_steps, n - 1 - i) + 1):
            js = slice(i + 1, n - k + 1)
            candidates = cost[i, js] + scaled[k - 1, js]
            best = int(np.argmin(candidates))  # the first minimum: the smallest next index on ties
            value[k, i] = candidates[best]
            nxt[k, i] = i + 1 + best
            scaled[k, i] = discount * value[k, i]


def _as_cost(cost) -> np.ndarray:
    """Validate and convert an array-like to a C-contiguous float64 (N, N) array (no copy when it is one)."""
    arr = np.asarray(cost)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"cost must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"cost must be a 2-D (N, N) array, got {arr.ndim}-D with shape {arr.shape}")
    if arr.shape[0] != arr.shape[1]:
        raise ValueError(f"cost must be square (N, N), got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"cost must have at least 2 grid points (N >= 2), got N = {arr.shape[0]}")
    return np.ascontiguousarray(arr, dtype=np.float64)


def _as_discount(discount) -> float:
    try:
        d = float(discount)
    except (TypeError, ValueError):
        raise ValueError(f"discount must be a number > 0, got {discount!r}") from None
    if not (d > 0 and math.isfinite(d)):
        raise ValueError(f"discount must be a finite number > 0, got {discount!r}")
    return d


def _solve(cost, max_steps, discount, backend: str, steps_name: str):
    c = _as_cost(cost)
    n = c.shape[0]
    k = check_int(max_steps, steps_name, 1, n - 1)  # TypeError: not an integer; ValueError: range
    d = _as_discount(discount)
    _, kernel = dp_kernel(backend)
    value, nxt, bad_row = kernel(c, k, d)
    if bad_row >= 0:
        j = bad_row + 1 + int(np.flatnonzero(~np.isfinite(c[bad_row, bad_row + 1 :]))[0])
        raise ValueError(f"cost must be finite above the diagonal; cost[{bad_row}, {j}] = {c[bad_row, j]}")
    return value, nxt, k


def _as_start_costs(start_costs, n: int) -> np.ndarray:
    """Validate ``start_costs``: (N,) float64, each >= 0 or +inf (a start not allowed), entry 0 finite."""
    e0 = np.asarray(start_costs, dtype=np.float64)
    if e0.shape != (n,):
        raise ValueError(f"start_costs must have shape ({n},), one per grid point, got {e0.shape}")
    if np.any(np.isnan(e0)) or np.any(e0 < 0) or not np.isfinite(e0[0]):
        raise ValueError("start_costs must be >= 0 (+inf where a start is not allowed), finite at point 0")
    return e0


def _first(value: np.ndarray, steps: int, start_costs: np.ndarray | None) -> tuple[int, float]:
    """(the start, the path's total): 0 and V[steps][0], or the best free start and its sum."""
    if start_costs is None:
        return 0, float(value[steps, 0])
    totals = start_costs + value[steps]  # +inf where a start is not allowed or no k-step path exists
    j = int(np.argmin(totals))  # the first minimum: the smallest start on ties
    return j, float(totals[j])


def _backtrack(
    value: np.ndarray, nxt: np.ndarray, steps: int, start_costs: np.ndarray | None = None
) -> BellmanPath:
    i, total = _first(value, steps, start_costs)
    if not math.isfinite(total):
        raise ValueError(
            f"the best {steps}-step path cost overflows float64 ({total}); rescale the cost matrix"
        )
    indices = np.empty(steps + 1, dtype=np.int64)
    indices[0] = i
    for m, k in enumerate(range(steps, 0, -1), start=1):
        i = int(nxt[k, i])
        indices[m] = i
    indices.setflags(write=False)
    return BellmanPath(indices=indices, cost=total)


def bellman_path(cost, steps: int, *, discount: float = 1.0, backend: str = "auto") -> BellmanPath:
    """The least-cost ``steps``-step path from grid point 0 to N - 1.

    Args:
        cost: (N, N) array-like (lists, float32, Fortran order and strided views are converted); only the
            strict upper triangle is read and it must be finite.
        steps: the step budget K, an integer in [1, N - 1].
        discount: weight ``discount**m`` on the m-th step (m = 0 first, from the noise end): 1 is BOSS;
            > 1 weights later steps (toward the data) more, as GITS's coefficient 1.15 does; < 1 the early
            ones.
        backend: "auto" (fastest available; see :func:`boss_fast.dp_backends`), "cpp", "numba" or "numpy".

    Example:
        >>> import numpy as np, boss_fast as bf
        >>> t = np.linspace(0, 1, 5)
        >>> cost = (t[None, :] - t[:, None]) ** 2  # convex in step length: equal steps are optimal
        >>> bf.bellman.bellman_path(cost, 2).indices.tolist()
        [0, 2, 4]
    """
    value, nxt, k = _solve(cost, steps, discount, backend, "steps")
    return _backtrack(value, nxt, k)


def bellman_paths(
    cost, max_steps: int, *, discount: float = 1.0, backend: str = "auto", start_costs=None
) -> list[BellmanPath]:
    """The least-cost path for every budget 1..``max_steps`` from one table; ``paths[k - 1]`` has k steps.

    Costs about one :func:`bellman_path` call with ``steps=max_steps``. Arguments as in :func:`bellman_path`;
    ``start_costs``: None (every path starts at grid point 0) or (N,) costs of starting at each grid point
    (>= 0, +inf where not allowed, finite at 0), added undiscounted to the path's: each budget's path then
    starts at the j minimising ``start_costs[j] + V[k][j]`` (module docstring).

    Example:
        >>> t = np.linspace(0, 1, 5)
        >>> [p.indices.tolist() for p in bellman_paths((t[None, :] - t[:, None]) ** 2, 2)]
        [[0, 4], [0, 2, 4]]
    """
    value, nxt, k = _solve(cost, max_steps, discount, backend, "max_steps")
    e0 = None if start_costs is None else _as_start_costs(start_costs, value.shape[1])
    return [_backtrack(value, nxt, s, e0) for s in range(1, k + 1)]
