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
(tests/test_own_state.py measures how far it is on small grids).

Cost: level k evaluates the model once per reachable source i and sample: 1 at k = 1, N - k for k >= 2; every
budget up to K at once costs about K x N evaluations per sample, plus the teacher. The comparison of every
candidate jump with X*_j is ``trajectory_cost_sums(X*, v, t, starts=S)``: the vectorised, float64-exact
pairwise kernel of BOSS's cost matrix with the sampler's states as starts (no Python loop over pairs). The
new states go through ``euler_update``, the sampler's own step, so S[k][N - 1] is bit for bit what
``sample(velocity, noise, schedule)`` returns on the same batch. The argmin and backtracking are O(N^2) numpy
per level: measured on a loaded 2-core machine, 2 ms per level at N = 101 and 75 ms at N = 1001, while the
same level evaluates the model N - k times per batch (one digits DiT evaluation of 256 samples: 1-2 s there),
so a compiled kernel would not show (benchmarks/test_bench_own_state.py).

Streaming. The argmin of level k needs the sums over ALL samples, so the loop is level-major: per level, a
pass over this process's noise batches accumulates float64 (sum, count) of the candidates' errors, then one
argmin; the next level's pass first advances each batch's states through the pointers. Stored per batch,
for the whole search: the teacher states (N, B, ...), the current level's states (N, B, ...) and their
velocities (N - 1, B, ...), in the noise's dtype on the search device: 3 x num_samples x N x (sample size)
values in all (digits 8 x 8, 256 samples, N = 101: 20 MB in float32). Under torch.distributed rank r of W
keeps batches r, r + W, ... and the (sum, count) of each level are all-reduced, as ``cost_matrix`` does: every
rank takes the same decisions. The result depends on the batching only through float64 summation order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from boss_fast._checkpoint import (
    checkpoint_model_key,
    noise_identity,
    read_npz_checkpoint,
    write_npz_checkpoint,
)
from boss_fast._runtime import all_reduce_sums, rank_path, rank_world
from boss_fast._validation import (
    METRICS,
    as_times,
    check_choice,
    check_int,
    check_noise,
    check_teacher,
)
from boss_fast.bellman import BellmanPath
from boss_fast.cost import trajectory_cost_sums
from boss_fast.ode import VelocityFn, euler_update, evaluate, for_rows
from boss_fast.trajectories import model_fingerprint, teacher_trajectory

__all__ = ["OwnStateTable", "accumulate_own_state", "own_state_paths", "own_state_table"]

CHECKPOINT_FORMAT = "boss_fast.own_state_checkpoint"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class OwnStateTable:
    """The own-state DP's table for budgets 1 .. K on a grid of N points.

    Attributes:
        costs: (K + 1, N) float64; ``costs[k, j]`` is C[k][j], the mean error at grid point j of the best
            k-step state arriving there (+inf where j is not reachable in k steps; row 0 all +inf).
        pointers: (K + 1, N) int64; ``pointers[k, j]`` = P[k][j], the previous grid point (-1 where none).
        times: (N,) float64 grid.
        num_samples: noises the errors were averaged over.
    """

    costs: np.ndarray
    pointers: np.ndarray
    times: np.ndarray
    num_samples: int

    @property
    def max_steps(self) -> int:
        return self.costs.shape[0] - 1


def own_state_paths(table: OwnStateTable) -> list[BellmanPath]:
    """The k-step schedule of every budget k = 1 .. K: ``result[k - 1]``, backtracked over stored pointers.

    Each path's ``cost`` is ``table.costs[k, N - 1]``, the error at t = 1 against the teacher.

    Example:
        >>> grid = np.linspace(0, 1, 11)
        >>> table = own_state_table(lambda x, t: -x, torch.randn(8, 2), grid, 2, progress=False)
        >>> [p.indices.tolist()[::len(p.indices) - 1] for p in own_state_paths(table)]  # each from 0 to N - 1
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


# ------------------------------------------------------------------------------------------ one level


class _Batch:
    """One noise batch's stored rows: teacher states, the current level's states and their velocities, and
    the velocity these rows see (``for_rows``: a bank of conditionings pairs noise m with entry m mod P)."""

    def __init__(self, teacher: torch.Tensor, noise: torch.Tensor, velocity: VelocityFn) -> None:
        self.velocity = velocity
        self.teacher = teacher  # (N, B, ...)
        self.states = torch.empty_like(teacher)  # rows reachable at the current level are valid
        self.states[0].copy_(noise)
        self.velocities = torch.empty_like(teacher[:-1])

    def advance(self, pointers: np.ndarray, level: int, hosts: list[float]) -> None:
        """States of ``level`` from the previous level's states, velocities and ``pointers`` (P[level])."""
        new = torch.empty_like(self.states)
        for j in range(level, len(hosts)):
            i = int(pointers[j])
            euler_update(self.states[i], self.velocities[i], hosts[j] - hosts[i], out=new[j])
        self.states = new

    def evaluate(self, level: int, hosts: list[float]) -> None:
        """Velocities at the sources of level + 1: grid point 0 at level 0, else level .. N - 2."""
        sources = range(1) if level == 0 else range(level, len(hosts) - 1)
        for i in sources:
            self.velocities[i].copy_(evaluate(self.velocity, self.states[i], hosts[i]))
        bad = ~torch.isfinite(self.velocities[sources.start : sources.stop]).all()
        if bool(bad):
            raise ValueError(
                f"velocity returned non-finite values at the sampler's own {level}-step states "
                f"(grid times {hosts[sources.start]!r} .. {hosts[sources.stop - 1]!r})"
            )

    def error_sums(self, level: int, times: np.ndarray, metric: str) -> tuple[np.ndarray, int, int]:
        """(sums, count, lo): errors of every jump of level + 1 on the sub-grid ``times[lo:]``."""
        n = len(times)
        if level == 0:
            # One source, the noise: its slope on every row makes row 0 the jump 0 -> j (rows > 0 unused).
            velocities = self.velocities[:1].expand(n - 1, *self.velocities.shape[1:])
            starts = torch.cat([self.states[:1], self.teacher[1:-1]])
            lo = 0
        else:
            lo = level
            velocities, starts = self.velocities[lo:], self.states[lo:-1]
        sums, count = trajectory_cost_sums(self.teacher[lo:], velocities, times[lo:], metric, starts=starts)
        return sums, count, lo


def _decide(sums: np.ndarray, count: int, lo: int, level: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row ``level`` of the table (costs (N,), pointers (N,)) from the reduced sums of its jumps."""
    mean = sums / count
    sub = n - lo
    allowed = np.triu(np.ones((sub, sub), dtype=bool), 1)
    if level == 1:
        allowed[1:] = False  # only grid point 0 is reached in 0 steps
    masked = np.where(allowed, mean, np.inf)
    best = np.argmin(masked, axis=0)  # the smallest i on ties
    costs = np.full(n, np.inf)
    pointers = np.full(n, -1, dtype=np.int64)
    costs[level:] = masked[best, np.arange(sub)][level - lo :]
    pointers[level:] = (best + lo)[level - lo :]
    return costs, pointers


# ---------------------------------------------------------------------------------- streaming driver


def _save_checkpoint(
    path: str, header: dict[str, object], table: np.ndarray, ptrs: np.ndarray, done: int
) -> None:
    write_npz_checkpoint(path, header, costs=table, pointers=ptrs, levels_done=np.int64(done))


def _load_checkpoint(path: str, header: dict[str, object], shape: tuple[int, int]):
    """Read a checkpoint written by ``_save_checkpoint`` and check it belongs to this run."""
    stored = read_npz_checkpoint(path, header, "own-state checkpoint")
    costs, pointers = stored["costs"], stored["pointers"]
    if costs.shape != shape or pointers.shape != shape or costs.dtype != np.float64:
        raise ValueError(f"own-state checkpoint {path} holds a table of shape {costs.shape}, not {shape}")
    return costs.copy(), pointers.astype(np.int64), int(stored["levels_done"])


def _check_table(path: str, costs: np.ndarray, pointers: np.ndarray, done: int) -> None:
    """Refuse (ValueError naming ``path`` and the field) a table this run could not have written.

    Levels 1 .. ``done`` reach every grid point j >= level: its cost is finite and >= 0 and its pointer i
    satisfies level - 1 <= i < j.
    """
    if not 0 <= done <= costs.shape[0] - 1:
        raise ValueError(
            f"own-state checkpoint {path}: levels_done = {done} is outside 0 .. {costs.shape[0] - 1}"
        )
    for level in range(1, done + 1):
        reach = costs[level, level:]
        if not np.all(np.isfinite(reach)) or np.any(reach < 0):
            raise ValueError(
                f"own-state checkpoint {path}: costs of level {level} hold non-finite or negative values"
            )
        ptrs, cols = pointers[level, level:], np.arange(level, costs.shape[1])
        if np.any(ptrs < level - 1) or np.any(ptrs >= cols):
            raise ValueError(f"own-state checkpoint {path}: pointers of level {level} are out of range")


def _min_over_ranks(value: int) -> int:
    dist = torch.distributed
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    packed = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(packed, op=dist.ReduceOp.MIN)
    return int(packed.item())


def _resume(
    checkpoint: str | os.PathLike | None,
    run: dict[str, object],
    shape: tuple[int, int],
) -> tuple[str | None, dict[str, object], np.ndarray, np.ndarray, int]:
    """(path, header, costs, pointers, levels done): a fresh table, or what this run's checkpoint holds."""
    rank, world = rank_world()
    costs = np.full(shape, np.inf)
    pointers = np.full(shape, -1, dtype=np.int64)
    if checkpoint is None:
        return None, {}, costs, pointers, 0
    path = rank_path(os.fspath(checkpoint), rank, world)
    header = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        **run,
        "rank": rank,
        "world_size": world,
    }
    done = 0
    if os.path.exists(path):
        costs, pointers, done = _load_checkpoint(path, header, shape)
        _check_table(path, costs, pointers, done)
    if world > 1:  # a job stopped between two ranks' writes resumes from the level all of them finished
        done = _min_over_ranks(done)
    return path, header, costs, pointers, done


def _level_sums(
    batches: dict[int, _Batch],
    level: int,
    pointers: np.ndarray,
    hosts: list[float],
    times: np.ndarray,
    metric: str,
    measure: bool,
    bar: tqdm,
) -> tuple[np.ndarray | None, int, int]:
    """Advance every batch to ``level - 1``'s states, evaluate their velocities, and (when ``measure``) sum
    the errors of every jump of ``level``: (sums or None, count, lo)."""
    sums, count, lo = None, 0, 0
    for batch in batches.values():
        if level >= 2:
            batch.advance(pointers[level - 1], level - 1, hosts)
        batch.evaluate(level - 1, hosts)
        if measure:
            part, m, lo = batch.error_sums(level - 1, times, metric)
            sums = part if sums is None else sums + part
            count += m
            bar.update(1)
    return sums, count, lo


def accumulate_own_state(
    velocity: VelocityFn,
    make_batch: Callable[[int, int], torch.Tensor],
    num_samples: int,
    times: np.ndarray,
    max_steps: int,
    *,
    batch_size: int,
    solver: str,
    metric: str,
    device: torch.device | str | None,
    progress: bool,
    checkpoint: str | os.PathLike | None,
    identity: dict[str, str],
    mode: str | None = None,
) -> OwnStateTable:
    """Run the own-state DP over ``num_samples`` noises, level-major (see the module docstring).

    ``make_batch(start, stop)`` returns noises start .. stop - 1. Assumes validated arguments (``times`` a
    float64 grid of N points, 1 <= max_steps <= N - 1). Under torch.distributed rank r of W keeps batches
    r, r + W, ... and all-reduces each level's (sum, count). With ``checkpoint``, the table so far is written
    atomically after every level (``<root>.rank{r}-of-{W}<ext>`` per rank); a rerun replays the finished
    levels' model evaluations to rebuild its stored states (same batches, same bits) and goes on.
    """
    rank, world = rank_world()
    n = len(times)
    hosts = times.tolist()  # Python floats: no device reads in the loops
    mine = list(range(rank, -(-num_samples // batch_size), world))
    run = {"times": times, "max_steps": max_steps, "metric": metric, "solver": solver,
           "num_samples": num_samples, "batch_size": batch_size, **identity}  # fmt: skip
    path, header, costs, pointers, done = _resume(checkpoint, run, (max_steps + 1, n))
    if done == max_steps:
        return OwnStateTable(costs=costs, pointers=pointers, times=times, num_samples=num_samples)
    batches: dict[int, _Batch] = {}
    for b in mine:
        start, stop = b * batch_size, min((b + 1) * batch_size, num_samples)
        noise = make_batch(start, stop)
        if device is not None:
            noise = noise.to(device)
        rows_velocity = for_rows(velocity, torch.arange(start, stop))  # a bank: noise m, entry m mod P
        with torch.no_grad():
            teacher = teacher_trajectory(rows_velocity, noise, times, solver, keep="states", mode=mode)
        batches[b] = _Batch(teacher.states, noise, rows_velocity)
    bar = tqdm(total=max_steps * len(mine), initial=done * len(mine), disable=not progress or rank != 0,
               desc="own-state DP", unit="batch")  # fmt: skip
    with bar, torch.no_grad():
        for level in range(1, max_steps + 1):
            sums, count, lo = _level_sums(batches, level, pointers, hosts, times, metric, level > done, bar)
            if level <= done:
                continue
            if sums is None:  # a rank with no batch (more ranks than batches) adds zeros
                lo = 0 if level == 1 else level - 1
                sums = np.zeros((n - lo, n - lo))
            if world > 1:
                sums, count = all_reduce_sums(sums, count)
            costs[level], pointers[level] = _decide(sums, count, lo, level, n)
            if path is not None:
                _save_checkpoint(path, header, costs, pointers, level)
    return OwnStateTable(costs=costs, pointers=pointers, times=times, num_samples=num_samples)


def own_state_table(
    velocity: VelocityFn,
    noise: torch.Tensor,
    times: Sequence[float] | np.ndarray | torch.Tensor,
    max_steps: int,
    batch_size: int = 256,
    solver: str = "heun",
    metric: str = "l2sq",
    device: torch.device | str | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    *,
    mode: str | None = None,
    checkpoint_key: str | None = None,
) -> OwnStateTable:
    """The own-state DP of a velocity model over ``noise`` for every budget 1 .. ``max_steps``.

    The global-objective counterpart of ``cost_matrix``; ``own_state_paths`` turns the table into schedules.

    Args:
        velocity: ``velocity(x, t)`` (t = 0 noise, t = 1 data), already on ``device``.
        noise: (M, ...) floating tensor, the M start points.
        times: (N,) strictly increasing grid in [0, 1].
        max_steps: K, 1 <= K <= N - 1.
        batch_size: samples per batch, >= 1.
        solver: the teacher giving the targets X*_j: "heun" (default: 2 evaluations per grid step, the
            most accurate fixed-step teacher within 12x the local search's evaluations at K = 10 on a
            100-step grid), "rk4" (4), "euler" (1), or "dopri5" (mode=None only).
        metric: "l2sq" (mean squared L2 error) or "l2" (mean L2 norm).
        device, progress, checkpoint, mode: as ``cost_matrix`` (the checkpoint is rewritten after every
            level, and ``mode`` runs the teacher on a recording ``Sampler``).
        checkpoint_key: as ``cost_matrix``: required with ``checkpoint`` when ``velocity`` is not an
            ``nn.Module``.

    Example:
        >>> grid = np.linspace(0, 1, 11)
        >>> table = own_state_table(lambda x, t: -x, torch.randn(8, 2), grid, 3, progress=False)
        >>> len(own_state_paths(table)), table.num_samples
        (3, 8)
    """
    noise = check_noise(noise)
    t = as_times(times)
    max_steps = check_int(max_steps, "max_steps")
    if max_steps >= len(t):
        raise ValueError(f"max_steps must be < len(times) = {len(t)} (at most {len(t) - 1}), got {max_steps}")
    batch_size = check_int(batch_size, "batch_size")
    solver = check_teacher(solver, mode)
    metric = check_choice(metric, METRICS, "metric")
    model = checkpoint_model_key(velocity, checkpoint, checkpoint_key, model_fingerprint)
    identity = {} if checkpoint is None else noise_identity(noise, model)
    return accumulate_own_state(
        velocity,
        lambda start, stop: noise[start:stop],
        noise.shape[0],
        t,
        max_steps,
        batch_size=batch_size,
        solver=solver,
        metric=metric,
        device=device,
        progress=progress,
        checkpoint=checkpoint,
        identity=identity,
        mode=mode,
    )
