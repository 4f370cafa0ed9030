"""The global-error objective: a dynamic program over the sampler's OWN states.

Pei et al. 2025, "Optimal Stepsize for Diffusion Sampling" (OSS). BOSS (``boss_fast.cost`` + ``bellman``)
sums one-step errors made from the *teacher's* states; an Euler sampler makes its errors from its own states,
and an error made early grows on the way to t = 1, so the local sum is a weak proxy for the error at the end.
This DP targets the end. On the grid t_0 < ... < t_{N-1} with teacher states X*_j (``teacher_trajectory``)::

    S[0][0] = noise                                         (level 0: only grid point 0 is reached)
    cand(k, i, j) = S[k-1][i] + (t_j - t_i) v(S[k-1][i], t_i)          for i reachable in k - 1 steps, i < j
    C[k][j] = min_i mean over samples of ||cand(k, i, j) - X*_j||^2     (metric "l2sq"; "l2": of the norm)
    P[k][j] = that argmin i (the smallest on ties), S[k][j] = cand(k, P[k][j], j)

One choice of i is shared by every sample, as a schedule is. The k-step schedule backtracks the pointers from
(k, N - 1); its ``cost`` is C[k][N - 1], the mean squared error at t = 1 against the teacher. Keeping one
state per (k, j) makes the DP greedy in the past: it is not an exhaustive search over grid paths
(tests/test_global_objective.py measures how far it is on small grids).

Cost: level k evaluates the model once per reachable source i and sample: 1 at k = 1, N - k for k >= 2; every
budget up to K at once costs about K x N evaluations per sample, plus the teacher. The comparison of every
candidate jump with X*_j is ``trajectory_cost_sums(X*, v, t, starts=S)``: the vectorised, float64-exact
pairwise kernel of BOSS's cost matrix with the sampler's states as starts (no Python loop over pairs). The
new states go through ``euler_update``, the sampler's own step, so S[k][N - 1] is bit for bit what
``sample(velocity, noise, schedule)`` returns on the same batch. The argmin and backtracking are O(N^2) numpy
per level: measured on a loaded 2-core machine, 2 ms per level at N = 101 and 75 ms at N = 1001, while the
same level evaluates the model N - k times per batch (one digits DiT evaluation of 256 samples: 1-2 s there),
so a compiled kernel would not show (benchmarks/test_bench_global_objective.py).

Streaming (``boss_fast.engine``). The argmin of level k needs the sums over ALL samples, so the loop is
level-major: per level, a pass over this process's noise batches advances each batch's states through the
previous level's pointers (in place, descending j: no second block), evaluates the velocities at the
level's sources in wide calls of up to ``batch_size`` (state, time) rows whatever the number of noises, and
accumulates float64 (sum, count) of the candidates' errors; then one argmin. Kept per noise for the whole
search: the teacher's states (N rows), the current level's states (N) and their velocities (N - 1), in
the compute dtype, where ``store`` says: "device" (all on the search device), "host" (host memory, pinned
for CUDA) or "disk" (memory-mapped files, deleted at the end); with "host" and "disk" the device holds one
batch's three blocks. The memory law, with B = min(batch_size, this rank's noises), s bytes per value,
D values per sample, M_r this rank's noises (docs/search_memory.md measures it)::

    store    search device                       host (anonymous)      disk
    device   (3N - 1) M_r D s + N B D s          -                     -
    host     3 N B D s                           (3N - 1) M_r D s      -
    disk     3 N B D s                           -                     (3N - 1) M_r D s

plus one model call of ``batch_size`` rows and the pairwise kernel's float64 tiles (about 32 MiB). Under
torch.distributed rank r of W keeps batches r, r + W, ... and the (sum, count) of each level are
all-reduced, as ``cost_matrix`` does: every rank takes the same decisions. The result depends on the
batching only through float64 summation order, and not at all on the store.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from boss_fast._checkpoint import noise_identity, stored_array, stored_count
from boss_fast._identity import checkpoint_model_key
from boss_fast._validation import (
    METRICS,
    START_RULES,
    as_times,
    check_choice,
    check_int,
    check_noise,
    check_store_dir,
    check_teacher,
)
from boss_fast.bellman import BellmanPath
from boss_fast.cost import trajectory_cost_sums
from boss_fast.engine import (
    STORES,
    WIDE_MODES,
    Checkpoint,
    RowStore,
    Shard,
    WideEvaluator,
    checkpoint_rows,
    discard_rows,
    progress_bar,
    resolve_wide_mode,
)
from boss_fast.ode import VelocityFn, euler_update, start_state
from boss_fast.trajectories import DenseTeacher

__all__ = [
    "GlobalLevels",
    "GlobalPass",
    "GlobalTable",
    "accumulate_global",
    "global_paths",
    "global_table",
    "level_sources",
    "start_extra_evaluations",
    "start_sources",
]

# The file format keeps its first name: checkpoints written before the module was renamed still resume.
CHECKPOINT_FORMAT = "boss_fast.own_state_checkpoint"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class GlobalTable:
    """The own-state DP's table for budgets 1 .. K on a grid of N points.

    Attributes:
        costs: (K + 1, N) float64; ``costs[k, j]`` is C[k][j], the mean error at grid point j of the best
            k-step state arriving there (+inf where j is not reachable in k steps; row 0 all +inf).
        pointers: (K + 1, N) int64; ``pointers[k, j]`` = P[k][j], the previous grid point (-1 where none).
        times: (N,) float64 grid.
        num_samples: noises the errors were averaged over.
        endpoints: with ``keep_endpoints``, the teacher's state at t = 1 of each of this process's noise
            batches (its shard's batches in order, each (B_b, ...) in the compute dtype on the search
            device): what ``boss_fast.polish`` measures the schedules against; else None.
    """

    costs: np.ndarray
    pointers: np.ndarray
    times: np.ndarray
    num_samples: int
    endpoints: tuple[torch.Tensor, ...] | None = None

    @property
    def max_steps(self) -> int:
        return self.costs.shape[0] - 1


def global_paths(table: GlobalTable) -> list[BellmanPath]:
    """The k-step schedule of every budget k = 1 .. K: ``result[k - 1]``, backtracked over stored pointers.

    Each path's ``cost`` is ``table.costs[k, N - 1]``, the error at t = 1 against the teacher.

    Example:
        >>> grid = np.linspace(0, 1, 11)
        >>> table = global_table(lambda x, t: -x, torch.randn(8, 2), grid, 2, progress=False)
        >>> [p.indices.tolist()[::len(p.indices) - 1] for p in global_paths(table)]  # each from 0 to N - 1
        [[0, 10], [0, 10]]
    """
    last = len(table.times) - 1
    paths = []
    for k in range(1, table.max_steps + 1):
        indices = np.empty(k + 1, dtype=np.int64)
        indices[k] = last
        for level in range(k, 0, -1):
            indices[level - 1] = table.pointers[level, indices[level]]
        paths.append(BellmanPath(indices=indices, cost=float(table.costs[k, last])))
    return paths


def start_sources(rule: str, n: int, cap: int | None = None) -> np.ndarray:
    """Level 1's sources on a grid of ``n`` points: where the first step may jump from, the start knot.

    "zero": grid point 0 only (the pinned start); "noise", "scaled": every point 0 .. ``cap`` (None: n - 2,
    every point below the last), each holding the rule's start state ``start_state(noise, rule, t_j)``.

    Example:
        >>> start_sources("zero", 10).tolist(), start_sources("noise", 10, cap=3).tolist()
        ([0], [0, 1, 2, 3])
    """
    rule = check_choice(rule, START_RULES, "start")
    if rule == "zero":
        if cap is not None:
            raise ValueError(f"start_cap bounds a free start; start 'zero' is pinned at point 0, got {cap}")
        return np.zeros(1, dtype=np.int64)
    cap = n - 2 if cap is None else check_int(cap, "start_cap", minimum=0)
    if cap > n - 2:
        raise ValueError(f"start_cap must be a grid point below the last, 0 .. {n - 2}, got {cap}")
    return np.arange(cap + 1, dtype=np.int64)


def start_extra_evaluations(rule: str, n: int, cap: int | None = None) -> int:
    """The model evaluations per noise a start rule adds to the full own-state DP on ``n`` grid points.

    Level 1 evaluates the velocity once per source and noise: 1 source when the start is pinned, cap + 1
    when it is free; the other levels and the teacher do not change (a level-k source is reached in k - 1
    steps whatever the start). On a 100-step grid with the default cap: 99 more than the pinned 1056 for
    every K <= 10 with a Heun teacher (1155, 1.094x).

    Example:
        >>> start_extra_evaluations("zero", 101), start_extra_evaluations("noise", 101)
        (0, 99)
    """
    return len(start_sources(rule, n, cap)) - 1


# ------------------------------------------------------------------------------------------ one level

_LAYOUT = ("teacher", "states", "velocities")


def level_sources(level: int, n: int, first: int = 1) -> int:
    """The sources the full DP evaluates at ``level`` on a grid of ``n`` points, the model evaluations per
    noise of that level: ``first`` at level 1 (1 when the start is pinned, the noise at grid point 0; one per
    allowed start otherwise, ``1 + start_extra_evaluations``), n - level after (every point reached in
    level - 1 steps, level - 1 .. n - 2). The one home of the count (``boss_fast.search.search_bill``).

    Example:
        >>> sum(level_sources(k, 101) for k in range(1, 11))  # every budget K <= 10 on a 100-step grid
        856
    """
    return first if level == 1 else n - level


def _sources(
    level: int, n: int, restrict: np.ndarray | None, reachable: np.ndarray, first: np.ndarray
) -> np.ndarray:
    """The sorted grid indices allowed as sources of ``level``'s jumps (ValueError for a bad restriction).

    Default: every point reached in level - 1 steps below N - 1 (at level 1: ``first``, the start knots)."""
    default = first if level == 1 else np.flatnonzero(reachable[: n - 1])
    if restrict is None:
        return default
    src = np.asarray(restrict)
    if src.ndim != 1 or src.size == 0 or src.dtype.kind not in "iu" or np.any(np.diff(src) <= 0):
        raise ValueError(f"sources of level {level} must be a non-empty sorted int array, got {restrict!r}")
    if not np.all(np.isin(src, default)):
        raise ValueError(
            f"sources of level {level} must be grid points reached in {level - 1} steps below N - 1 = "
            f"{n - 1} (level 1: the allowed starts); {sorted(set(src.tolist()) - set(default.tolist()))} "
            "are not"
        )
    return src.astype(np.int64)


def _runs(src: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive runs [a, b) of a sorted index array."""
    cuts = np.flatnonzero(np.diff(src) != 1) + 1
    return [(int(r[0]), int(r[-1]) + 1) for r in np.split(src, cuts)]


@dataclass
class _Level:
    """What one batch's level step needs besides its rows (host floats: no device reads in the loops)."""

    level: int
    sources: np.ndarray
    pointers: np.ndarray  # P[level - 1] (unused at level 1)
    hosts: list[float]
    times: np.ndarray
    metric: str
    pinned: bool = True  # the start rule "zero": level 1's one source is the noise at grid point 0


def _advance(states: torch.Tensor, velocities: torch.Tensor, step: _Level) -> None:
    """States of level - 1 at the sources, from level - 2's states, velocities and P[level - 1], in place.

    Descending j: S[j] reads S[i] with i = P[j] < j, which a later (smaller) j overwrites only after."""
    hosts = step.hosts
    for j in step.sources[::-1].tolist():
        i = int(step.pointers[j])
        euler_update(states[i], velocities[i], hosts[j] - hosts[i], out=states[j])


def _evaluate(evaluator: WideEvaluator, states, velocities, rows: torch.Tensor, step: _Level) -> None:
    """Velocities at the sources, in wide calls over the flattened (source, sample) rows."""
    b = states.shape[1]
    flat_x = states.reshape(-1, *states.shape[2:])
    flat_v = velocities.reshape(-1, *states.shape[2:])
    for lo, hi in _runs(step.sources):
        t = torch.tensor(step.hosts[lo:hi], dtype=states.dtype).repeat_interleave(b).to(states.device)
        evaluator(flat_x[lo * b : hi * b], t, rows.repeat(hi - lo), flat_v[lo * b : hi * b])
    # One flag per source row (a gather of every source row would be a transient block), one host read.
    finite = torch.stack([torch.isfinite(velocities[i]).all() for i in step.sources.tolist()])
    if not bool(finite.all()):
        raise ValueError(
            f"velocity returned non-finite values at the sampler's own {step.level - 1}-step states "
            f"(grid times {step.hosts[step.sources[0]]!r} .. {step.hosts[step.sources[-1]]!r})"
        )


def _error_sums(teacher, states, velocities, step: _Level) -> tuple[np.ndarray, int, int]:
    """(sums, count, lo): errors of every jump of the level on the sub-grid ``times[lo:]``.

    At level 1 of a pinned start the one source is the noise, in states[0]; rows 1 .. N - 2 of the states
    hold the teacher's states there (copied when the batch was set up), so row 0 of the result is the jump
    0 -> j. With a free start the rows 0 .. cap hold the start states and their velocities (rows beyond the
    cap: the teacher's states and zero velocities, finite, masked out by ``_decide``)."""
    n = len(step.times)
    if step.level == 1 and step.pinned:
        lo, vel = 0, velocities[:1].expand(n - 1, *velocities.shape[1:])
    elif step.level == 1:
        lo, vel = 0, velocities
    else:
        lo = int(step.sources[0])
        vel = velocities[lo:]
    sums, count = trajectory_cost_sums(teacher[lo:], vel, step.times[lo:], step.metric, starts=states[lo:-1])
    return sums, count, lo


def _decide(
    sums: np.ndarray, count: int, lo: int, level: int, n: int, sources: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row ``level`` of the table (costs (N,), pointers (N,)) from the reduced sums of its jumps.

    ``sources``: the grid indices allowed as sources (default: 0 at level 1, every row from lo after);
    points no allowed source reaches keep cost +inf and pointer -1."""
    mean = sums / count
    sub = n - lo
    allowed = np.triu(np.ones((sub, sub), dtype=bool), 1)
    if sources is not None:
        allowed[~np.isin(np.arange(lo, n), sources)] = False
    elif level == 1:
        allowed[1:] = False  # only grid point 0 is reached in 0 steps
    masked = np.where(allowed, mean, np.inf)
    best = np.argmin(masked, axis=0)  # the smallest i on ties
    col = masked[best, np.arange(sub)]
    ok = np.isfinite(col)
    costs = np.full(n, np.inf)
    pointers = np.full(n, -1, dtype=np.int64)
    costs[lo:][ok] = col[ok]
    pointers[lo:][ok] = best[ok] + lo
    return costs, pointers


# ---------------------------------------------------------------------------------- streaming driver


def _check_table(path: str, costs: np.ndarray, pointers: np.ndarray, done: int) -> None:
    """Refuse (ValueError naming ``path`` and the field) a table this run could not have written.

    At levels 1 .. ``done`` a reached point j (finite cost) has a cost >= 0 and a pointer i with
    level - 1 <= i < j; a point not reached has +inf and -1; the last grid point is reached."""
    if not 0 <= done <= costs.shape[0] - 1:
        raise ValueError(
            f"own-state checkpoint {path}: levels_done = {done} is outside 0 .. {costs.shape[0] - 1}"
        )
    cols = np.arange(costs.shape[1])
    for level in range(1, done + 1):
        row, ptrs = costs[level], pointers[level]
        reached = np.isfinite(row)
        bad_cost = np.any(row[reached] < 0) or np.any(np.isnan(row)) or np.any(ptrs[~reached] != -1)
        if bad_cost or not reached[-1] or np.any(reached[:level]):
            raise ValueError(
                f"own-state checkpoint {path}: costs of level {level} hold non-finite or negative values"
            )
        if np.any(ptrs[reached] < level - 1) or np.any(ptrs[reached] >= cols[reached]):
            raise ValueError(f"own-state checkpoint {path}: pointers of level {level} are out of range")


def _resume(
    checkpoint: str | os.PathLike | None, run: dict[str, object], shape: tuple[int, int], shard: Shard
) -> tuple[Checkpoint | None, np.ndarray, np.ndarray, int]:
    """(checkpoint, costs, pointers, levels done): a fresh table, or what this run's checkpoint holds."""
    costs = np.full(shape, np.inf)
    pointers = np.full(shape, -1, dtype=np.int64)
    ckpt = Checkpoint.open(checkpoint, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, run, "own-state checkpoint")
    stored = None if ckpt is None else ckpt.load()
    done = 0
    if stored is not None:
        what = "own-state checkpoint"
        costs = stored_array(stored, "costs", shape, np.float64, ckpt.path, what)
        pointers = stored_array(stored, "pointers", shape, np.int64, ckpt.path, what)
        done = stored_count(stored, "levels_done", ckpt.path, what)
        _check_table(ckpt.path, costs, pointers, done)
    return ckpt, costs, pointers, shard.min_over_ranks(done)


# A per-level restriction of the sources: restrict(level, costs, pointers) -> sorted int array or None (all).
Restrict = Callable[[int, np.ndarray, np.ndarray], "np.ndarray | None"]


@dataclass(frozen=True)
class GlobalPass:
    """How the global objective's passes over noise batches run (validated at construction).

    Attributes:
        batch_size: noises per batch and (state, time) rows per wide model call, >= 1.
        solver: the teacher giving the targets X*_j: "heun" (default: 2 evaluations per grid step, the most
            accurate fixed-step teacher within 12x the local search's evaluations at K = 10 on a 100-step
            grid), "rk4" (4), "euler" (1), or "dopri5" (mode=None only).
        metric: "l2sq" (mean squared L2 error) or "l2" (mean L2 norm).
        mode: None runs the teacher's plain loop; "eager", "compile", "cuda_graph" or "auto" runs it on a
            recording ``Sampler`` and the DP's own wide calls alike (``boss_fast.engine.WideEvaluator``).
        store: where the per-sample rows live between levels, "device", "host" or "disk" (see the module
            docstring); the table does not depend on it.
        store_dir: the folder of "disk"'s temporary files (None: the checkpoint's folder, else the system's
            temporary directory); only with store="disk".
        teacher_stride: the teacher's solver runs on every stride-th grid point, the rest interpolated
            (:class:`boss_fast.trajectories.DenseTeacher`; 1: every point).
        start: the start rule (``boss_fast._validation.START_RULES``): "zero" (level 1 jumps from the noise at
            grid point 0, the pinned start) or "noise" / "scaled" (level 1 may jump from any grid point
            0 .. ``start_cap``, from ``start_state(noise, rule, t_j)``: the start is a DP variable, one per
            (k, j) as every other knot); :func:`start_extra_evaluations` more evaluations per noise.
        start_cap: the last grid point a free start may take (None: N - 2); only with a free start.

    Example:
        >>> GlobalPass(batch_size=64).solver, GlobalPass(store="host").store
        ('heun', 'host')
    """

    batch_size: int = 256
    solver: str = "heun"
    metric: str = "l2sq"
    mode: str | None = None
    store: str = "device"
    store_dir: str | os.PathLike | None = None
    teacher_stride: int = 1
    start: str = "zero"
    start_cap: int | None = None

    def __post_init__(self) -> None:
        check_int(self.batch_size, "batch_size")
        if self.mode is not None:
            check_choice(self.mode, WIDE_MODES, "mode")
        check_teacher(self.solver, self.mode)
        check_choice(self.metric, METRICS, "metric")
        check_choice(self.store, STORES, "store")
        check_store_dir(self.store_dir, self.store)
        check_int(self.teacher_stride, "teacher_stride")
        check_choice(self.start, START_RULES, "start")
        if self.start_cap is not None:
            check_int(self.start_cap, "start_cap", minimum=0)
            if self.start == "zero":
                raise ValueError(
                    f"start_cap bounds a free start; start 'zero' takes None, got {self.start_cap}"
                )


class GlobalLevels:
    """The global objective's passes over this rank's noise batches: the teacher once, then one level step
    per call, the rows kept in a :class:`boss_fast.engine.RowStore` between steps.

    ``step(level, pointers, sources=None, measure=True)`` advances every batch to the states of level - 1
    (``pointers`` = P[level - 1], unused at level 1), evaluates the velocities at the level's sources in
    wide calls, and with ``measure`` returns that level's table row (costs (N,), pointers (N,)), reduced
    over the ranks (every rank decides alike); without it (replaying a resumed run's finished levels)
    returns None. ``sources``: a sorted int array of grid indices allowed as sources at that level, a subset
    of the points reached in level - 1 steps below N - 1 (default: all of them; ValueError otherwise);
    only those are evaluated, and points no source reaches keep +inf / -1.

    Call widths: up to ``batch_size`` (state, time) rows per model call, whatever the number of noises.
    Memory on the device: one batch's teacher, states and velocities (3 N min(batch_size, M_r) D values)
    with store "host" / "disk", all of this rank's with "device" (see the module docstring).
    """

    @torch.no_grad()
    def __init__(self, velocity: VelocityFn, make_batch: Callable[[int, int], torch.Tensor], shard: Shard,
                 grid: np.ndarray, run: GlobalPass, device: torch.device | str | None,
                 rows_name: str | None = None) -> None:  # fmt: skip
        self.shard, self.times, self.metric, self.hosts = shard, grid, run.metric, grid.tolist()
        first = make_batch(*shard.span(0))  # one sample's shape and dtype
        dev = torch.device(device) if device is not None else first.device
        self.evaluator = WideEvaluator(velocity, shard.batch_size, resolve_wide_mode(run.mode, dev))
        n = len(grid)
        layout = dict(zip(_LAYOUT, (n, n, n - 1), strict=True))
        self.store = RowStore(
            run.store, layout, first.shape[1:], shard.sizes, first.dtype, dev, run.store_dir, rows_name
        )
        self._rows = [torch.arange(*shard.span(b), device=dev) for b in shard.mine]
        self.first = start_sources(run.start, n, run.start_cap)
        self.pinned = run.start == "zero"
        runner = DenseTeacher(velocity, grid, run.solver, run.mode, run.teacher_stride)
        for i, b in enumerate(shard.mine):
            noise = make_batch(*shard.span(b)).to(dev)
            teacher = runner(noise, self._rows[i])
            self.store.save("teacher", i, teacher)
            # Row 0 is the noise; rows 1 .. N - 2 serve level 1 (finite rows the pinned start masks out);
            # a free start's rows 0 .. cap are its start states, level 0's state at each allowed start.
            if not self.pinned:
                for j in self.first.tolist():
                    teacher[j] = start_state(noise, run.start, self.hosts[j])
            self.store.save("states", i, teacher)
            del teacher

    @torch.no_grad()
    def step(self, level: int, pointers: np.ndarray, sources: np.ndarray | None = None,
             measure: bool = True) -> tuple[np.ndarray, np.ndarray] | None:  # fmt: skip
        n = len(self.times)
        reachable = np.isfinite(np.zeros(n)) if level == 1 else pointers >= 0
        src = _sources(level, n, sources, reachable, self.first)
        work = _Level(level, src, pointers, self.hosts, self.times, self.metric, self.pinned)
        sums, count, lo = None, 0, (0 if level == 1 else int(src[0]))
        for i in range(len(self.shard.mine)):
            teacher, states, vel = (self.store.load(name, i) for name in _LAYOUT)
            if level >= 2:
                _advance(states, vel, work)
            _evaluate(self.evaluator, states, vel, self._rows[i], work)
            self.store.save("states", i, states)
            self.store.save("velocities", i, vel)
            if measure:
                part, m, lo = _error_sums(teacher, states, vel, work)
                sums, count = (part if sums is None else sums + part), count + m
        if not measure:
            return None
        if sums is None:  # a rank with no batch (more ranks than batches) adds zeros
            sums = np.zeros((n - lo, n - lo))
        sums, count = self.shard.reduce(sums, count)
        restricted = sources is not None or (level == 1 and not self.pinned)
        return _decide(sums, count, lo, level, n, src if restricted else None)

    def endpoints(self) -> tuple[torch.Tensor, ...]:
        """The teacher's last state of each of this rank's batches (copies on the device)."""
        return tuple(self.store.load("teacher", i)[-1].clone() for i in range(len(self.shard.mine)))

    def close(self) -> None:
        self.store.close()


def _stored_endpoints(ckpt: Checkpoint | None, shard: Shard, dtype: torch.dtype, device) -> tuple | None:
    """A finished checkpoint's teacher endpoints (float64 in the file: exact for every compute dtype), split
    into this rank's batches; None when the file predates them (the caller reruns the teacher)."""
    stored = None if ckpt is None else ckpt.load()
    if stored is None or "endpoints" not in stored:
        return None
    flat = stored["endpoints"]
    if flat.dtype != np.float64 or flat.ndim < 2 or flat.shape[0] != sum(shard.sizes):
        raise ValueError(
            f"own-state checkpoint {ckpt.path} holds 'endpoints' of shape {flat.shape} and dtype "
            f"{flat.dtype}; expected float64 with {sum(shard.sizes)} rows (this rank's noises)"
        )
    return tuple(torch.from_numpy(flat).to(device=device, dtype=dtype).split(shard.sizes))


def _finished_endpoints(ckpt: Checkpoint | None, shard: Shard, make_batch: Callable[[int, int], torch.Tensor],
                        device, teacher: Callable[[], GlobalLevels]) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """A finished run's teacher endpoints: from its checkpoint, or, for a checkpoint written before they were
    kept, from the teacher alone (``teacher()`` builds the levels, which runs it; no DP level runs)."""
    first = make_batch(*shard.span(0))
    dev = torch.device(device) if device is not None else first.device
    ends = _stored_endpoints(ckpt, shard, first.dtype, dev)
    if ends is not None:
        return ends
    with torch.no_grad():
        levels = teacher()
    try:
        return levels.endpoints()
    finally:
        levels.close()


def _flat_endpoints(endpoints: tuple[torch.Tensor, ...]) -> np.ndarray:
    return torch.cat(endpoints).to(torch.float64).cpu().numpy()


def accumulate_global(
    velocity: VelocityFn,
    make_batch: Callable[[int, int], torch.Tensor],
    num_samples: int,
    grid: np.ndarray,
    max_steps: int,
    run: GlobalPass,
    *,
    device: torch.device | str | None,
    progress: bool,
    checkpoint: str | os.PathLike | None,
    identity: dict[str, str],
    restrict: Restrict | None = None,
    keep_endpoints: bool = False,
) -> GlobalTable:
    """Run the own-state DP over ``num_samples`` noises, level-major (see the module docstring).

    ``make_batch(start, stop)`` returns noises start .. stop - 1. Assumes validated arguments (``grid`` a
    float64 grid of N points, 1 <= max_steps <= N - 1). Under torch.distributed rank r of W keeps batches
    r, r + W, ... and all-reduces each level's (sum, count). With ``checkpoint``, the table so far is written
    atomically after every level (``<root>.rank{r}-of-{W}<ext>`` per rank); a rerun replays the finished
    levels' model evaluations to rebuild its stored states (same batches, same bits) and goes on.
    ``run``: batch size, teacher, metric, mode, store (:class:`GlobalPass`; ``store_dir`` defaults to the
    checkpoint's folder). ``restrict(level, costs, pointers)``: the sources allowed at each level given the
    table so far (None: all); a restricted run must record what restricts it in ``identity``.
    ``keep_endpoints``: return the teacher's endpoints in ``GlobalTable.endpoints`` (and write them with the
    last level, so a finished checkpoint gives them back without a teacher run).
    """
    shard = Shard.of_this_process(num_samples, run.batch_size)
    n = len(grid)
    header = {"times": grid, "max_steps": max_steps, "metric": run.metric, "solver": run.solver,
              "num_samples": num_samples, "batch_size": run.batch_size, **identity}  # fmt: skip
    # Always in the header: a reader ignores keys it does not ask for, so a stride-2 file must be refused by a
    # stride-1 run through this key being asked for.
    header["teacher_stride"] = run.teacher_stride
    # Likewise the start rule and its cap (-1: pinned): a free-start table must not resume a pinned run.
    header["start"] = run.start
    header["start_cap"] = -1 if run.start == "zero" else int(start_sources(run.start, n, run.start_cap)[-1])
    ckpt, costs, pointers, done = _resume(checkpoint, header, (max_steps + 1, n), shard)
    rows_name = None
    if run.store == "disk" and ckpt is not None:  # rows named after the checkpoint: a killed run's are found
        if run.store_dir is None:
            run = replace(run, store_dir=os.path.dirname(os.path.abspath(checkpoint)))
        rows_name = checkpoint_rows(ckpt.path)
    table = GlobalTable(costs=costs, pointers=pointers, times=grid, num_samples=num_samples)
    if done == max_steps:
        if rows_name is not None:  # killed after its last level was saved
            discard_rows(run.store_dir, rows_name)
        if not keep_endpoints:
            return table
        teacher = lambda: GlobalLevels(velocity, make_batch, shard, grid, run, device, rows_name)  # noqa: E731
        return replace(table, endpoints=_finished_endpoints(ckpt, shard, make_batch, device, teacher))
    with torch.no_grad():
        levels = GlobalLevels(velocity, make_batch, shard, grid, run, device, rows_name)
    bar = progress_bar(max_steps, done, progress, "own-state DP", unit="level")
    ends = None
    try:
        with bar, torch.no_grad():
            for level in range(1, max_steps + 1):
                sources = None if restrict is None else restrict(level, costs, pointers)
                row = levels.step(level, pointers[level - 1], sources, measure=level > done)
                if row is None:
                    continue
                costs[level], pointers[level] = row
                if ckpt is not None:
                    final = keep_endpoints and level == max_steps
                    last = {"endpoints": _flat_endpoints(levels.endpoints())} if final else {}
                    ckpt.save(costs=costs, pointers=pointers, levels_done=np.int64(level), **last)
                bar.update(1)
            if keep_endpoints:
                ends = levels.endpoints()
    finally:
        levels.close()
    return replace(table, endpoints=ends)


def global_table(
    velocity: VelocityFn,
    noise: torch.Tensor,
    grid: Sequence[float] | np.ndarray | torch.Tensor,
    max_steps: int,
    run: GlobalPass | None = None,
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_key: str | None = None,
) -> GlobalTable:
    """The global objective's DP (over the sampler's own states) of a velocity model over ``noise``, for
    every budget 1 .. ``max_steps``.

    The global-objective counterpart of ``cost_matrix``; ``global_paths`` turns the table into schedules.

    Args:
        velocity: ``velocity(x, t)`` (t = 0 noise, t = 1 data), already on ``device``.
        noise: (M, ...) floating tensor, the M start points.
        grid: (N,) strictly increasing grid times in [0, 1].
        max_steps: K, 1 <= K <= N - 1.
        run: batch size, teacher solver, metric, mode, store (:class:`GlobalPass`; None: its defaults).
        device, progress, checkpoint: as ``cost_matrix`` (the checkpoint is rewritten after every level).
        checkpoint_key: as ``cost_matrix``: required with ``checkpoint`` when ``velocity`` is not an
            ``nn.Module``.

    Example:
        >>> grid = np.linspace(0, 1, 11)
        >>> table = global_table(lambda x, t: -x, torch.randn(8, 2), grid, 3, progress=False)
        >>> len(global_paths(table)), table.num_samples
        (3, 8)
    """
    noise = check_noise(noise)
    t = as_times(grid, "grid")
    max_steps = check_int(max_steps, "max_steps")
    if max_steps >= len(t):
        raise ValueError(f"max_steps must be < len(grid) = {len(t)} (at most {len(t) - 1}), got {max_steps}")
    run = GlobalPass() if run is None else run
    if not isinstance(run, GlobalPass):
        raise TypeError(f"run must be a GlobalPass, got {type(run).__name__}")
    model = checkpoint_model_key(velocity, checkpoint, checkpoint_key)
    identity = {} if checkpoint is None else noise_identity(noise, model)
    return accumulate_global(
        velocity,
        lambda start, stop: noise[start:stop],
        noise.shape[0],
        t,
        max_steps,
        run,
        device=device,
        progress=progress,
        checkpoint=checkpoint,
        identity=identity,
    )
