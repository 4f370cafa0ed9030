"""Straightening pairs: the teacher's states at the schedule's times, from M noises, streamed batch by batch
(the engine's ``Shard``) through an optional cache of safetensors shards, one per batch.

Nguyen, Nguyen & Nguyen (ICLR 2024), section 4: from M noises run the teacher's fine trajectory on the
schedule's base grid and keep the states at the schedule's times tau_0 < ... < tau_K; pair (m, k) is the
state at tau_k (for k = 0 the schedule's start state) and the state at tau_{k+1}.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from boss_fast._checkpoint import CHECKSUM_KEY
from boss_fast._header import check_header, header_strings, make_header, write_file
from boss_fast._identity import cache_key, model_fingerprint, value_digest
from boss_fast._runtime import rank_world
from boss_fast._validation import check_int, check_noise, check_teacher
from boss_fast.engine import Shard, progress_bar
from boss_fast.grids import resolve_grid
from boss_fast.ode import VelocityFn, euler_update, for_rows, start_state
from boss_fast.schedule import Schedule
from boss_fast.straighten.settings import PairTeacher
from boss_fast.trajectories import TeacherRunner

__all__ = [
    "PILOT_NOISES",
    "SHARD_FORMAT",
    "SHARD_VERSION",
    "StraighteningPairs",
    "check_schedule",
    "pair_density",
    "pair_grid",
    "straightening_pairs",
]


class StraighteningPairs(NamedTuple):
    """Training pairs, one row per (noise m, interval k), row ``m * K + k``.

    Attributes:
        start: (M * K, ...) teacher states at tau_k, but for k = 0 the schedule's start state at tau_0
            (``boss_fast.ode.start_state`` of the noise by ``Schedule.start``: where its sampler starts).
        end: (M * K, ...) teacher states at tau_{k+1}.
        t_start: (M * K,) tau_k in the states' dtype.
        t_end: (M * K,) tau_{k+1} in the states' dtype.
    """

    start: torch.Tensor
    end: torch.Tensor
    t_start: torch.Tensor
    t_end: torch.Tensor


def check_schedule(sched: object, grid: int | Sequence[float] | np.ndarray, solver: str | None) -> Schedule:
    """The schedule must be a ``Schedule`` (flow time, t = 0 noise) chosen on ``grid`` by ``solver`` (None:
    whichever teacher chose it)."""
    if not isinstance(sched, Schedule):
        raise TypeError(
            f"sched must be a boss_fast.Schedule (flow time, t = 0 noise, t = 1 data), got "
            f"{type(sched).__name__}; build one with optimal_schedules(...)[K] or Schedule.load"
        )
    expected = resolve_grid(grid)
    if sched.grid.shape != expected.shape or not np.array_equal(sched.grid, expected):
        raise ValueError(
            f"the schedule was chosen on a grid of {len(sched.grid)} points "
            f"[{float(sched.grid[0])!r} .. {float(sched.grid[-1])!r}] but grid={_describe(grid)} gives "
            f"{len(expected)} points [{float(expected[0])!r} .. {float(expected[-1])!r}]: "
            "pass the schedule's own grid"
        )
    if solver is not None and sched.solver != solver:
        raise ValueError(
            f"the schedule was chosen with a {sched.solver!r} teacher but solver={solver!r}: "
            "the pairs must come from the trajectory the schedule was optimised for"
        )
    return sched


def _describe(grid: object) -> str:
    return repr(grid) if isinstance(grid, int | np.integer) else f"<{len(np.asarray(grid))} times>"


def _cache_key(
    teacher: VelocityFn, path: tuple[np.ndarray, np.ndarray], noise: torch.Tensor, solver: str, shard: int
) -> str:
    """Identity of a pair cache: teacher weights, the teacher's grid and kept indices (``path``), solver,
    noise bytes and shard size."""
    ident = (
        model_fingerprint(teacher) if isinstance(teacher, nn.Module) else getattr(teacher, "__qualname__", "")
    )
    return cache_key([ident, path[0].tolist(), path[1].tolist(), solver, shard], noise)


# The pilot of the "adaptive" spacing: the first PILOT_NOISES pair noises on the schedule's grid, Euler.
PILOT_NOISES = 32


@torch.no_grad()
def pair_density(
    velocity: VelocityFn, noise: torch.Tensor, grid: np.ndarray, batch_size: int = PILOT_NOISES
) -> np.ndarray | None:
    """Step density per cell of ``grid`` from an Euler pilot of ``noise``, for the "adaptive" pair spacing.

    Runs Euler on the (N,) ``grid`` from every noise (row m with conditioning m, ``boss_fast.ode.for_rows``),
    ``batch_size`` noises a call, N - 1 evaluations each (none at the last time), keeping only, per step, the
    sum of squares of the slope's change: memory of one batch's state, whatever N. Euler's local error over a
    step h is about h^2 |dv/dt| / 2, so steps of equal error have density sqrt(|dv/dt|): cell i gets
    sqrt(rms |v_{i+1} - v_i| / h_i), the last cell its neighbour's, and a floor of 1e-3 of the largest keeps
    every cell reachable. On the bundled digits DiT (Heun, 12 steps, against dopri5) the pairs' worst knot
    error at K = 4 fell from 0.062 (uniform cuts) to 0.016 (benchmarks/results/pair_accuracy.md).
    None when the slope never changes (a straight flow: any spacing is exact, uniform is kept).

    Example:
        >>> grid = np.linspace(0.0, 1.0, 5)
        >>> slope = lambda x, t: torch.ones_like(x) * (1.0 + 16.0 * t[:, None] ** 2)  # dv/dt = 32 t
        >>> pair_density(slope, torch.zeros(3, 2), grid).round(3).tolist()  # sqrt(32 t) at cell centres
        [2.0, 3.464, 4.472, 4.472]
    """
    times = np.asarray(grid, dtype=np.float64)
    h = np.diff(times)
    if len(h) < 2:
        return None
    squares = torch.zeros(len(h) - 1, dtype=torch.float64, device=noise.device)  # summed on the device
    for start in range(0, noise.shape[0], batch_size):
        x = noise[start : start + batch_size]
        v_fn = for_rows(velocity, torch.arange(start, start + x.shape[0], device=x.device))
        previous = None
        for i in range(len(h)):
            v = v_fn(x, torch.full((x.shape[0],), float(times[i]), dtype=x.dtype, device=x.device))
            if previous is not None:
                squares[i - 1] += (v - previous).double().square().sum()
            x, previous = euler_update(x, v, float(h[i])), v
    per_entry = squares.cpu().numpy() / noise[0].numel() / noise.shape[0]  # the pilot's one host read
    change = np.sqrt(per_entry) / h[:-1]
    if not np.isfinite(change).all():
        raise ValueError("the pilot's velocities are not finite: the teacher diverged on the schedule's grid")
    if change.max() <= 0.0:
        return None
    rho = np.sqrt(np.concatenate([change, change[-1:]]))
    return np.maximum(rho, 1e-3 * rho.max())


def pair_grid(
    sched: Schedule, steps: int, density: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A ``steps``-step teacher grid through the schedule's times, and where they lie on it.

    The segments between ``sched.grid[0]`` and the schedule's times (the first segment is empty when the
    schedule starts at the grid's first point) share the steps in proportion to their lengths, at least one
    each (largest remainders, so they add up to ``steps``), each cut uniformly. With ``steps`` equal to the
    schedule's grid size on a uniform grid whose points hold the times, this is that grid. With ``density``
    ((len(sched.grid) - 1,) positive, per cell of ``sched.grid``, e.g. :func:`pair_density`) lengths become
    the density's mass: the segments share the steps by mass and each is cut into equal masses.

    Returns:
        ``(times, indices)``: (steps + 1,) float64 increasing teacher times and (K + 1,) int64 indices with
        ``times[indices] == sched.times``.

    Example:
        >>> sched = Schedule(np.array([0.0, 0.25, 1.0]), np.array([0, 1, 4]), 0.0, np.linspace(0, 1, 5))
        >>> times, indices = pair_grid(sched, 8)
        >>> times.tolist(), indices.tolist()
        ([0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0], [0, 2, 8])
        >>> half = Schedule(np.array([0.0, 0.5, 1.0]), np.array([0, 2, 4]), 0.0, np.linspace(0, 1, 5))
        >>> pair_grid(half, 4, density=np.array([1.0, 1.0, 3.0, 3.0]))[0].round(3).tolist()  # 3x the mass
        [0.0, 0.5, 0.667, 0.833, 1.0]
    """
    bounds = np.concatenate([[sched.grid[0]], sched.times]) if sched.times[0] > sched.grid[0] else sched.times
    segments = len(bounds) - 1
    steps = check_int(steps, "pair_steps")
    if steps < segments:
        run_up = ", plus grid[0] to its start" if segments >= len(sched.times) else ""
        raise ValueError(
            f"pair_steps={steps} is fewer than the {segments} segments the pairs' teacher must cross (the "
            f"schedule's {len(sched.times) - 1} steps{run_up}): give pair_steps >= {segments}, or None for "
            "the schedule's own grid"
        )
    if density is None:
        mass, cut = bounds, (lambda a, b, n: np.linspace(a, b, n + 1)[:-1])
    else:
        rho = np.asarray(density, dtype=np.float64)
        if rho.shape != (len(sched.grid) - 1,) or not (np.isfinite(rho).all() and (rho > 0).all()):
            raise ValueError(
                f"density must hold {len(sched.grid) - 1} finite positive values (one per cell of the "
                f"schedule's grid), got shape {rho.shape}"
            )
        cdf = np.concatenate([[0.0], np.cumsum(rho * np.diff(sched.grid))])
        mass = np.interp(bounds, sched.grid, cdf)

        def cut(a: float, b: float, n: int) -> np.ndarray:
            ends = np.interp([a, b], sched.grid, cdf)
            inner = np.interp(np.linspace(ends[0], ends[1], n + 1), cdf, sched.grid)[:-1]
            inner[0] = a  # the knot itself, not its round trip through the mass
            return inner

    lengths = np.diff(mass)
    share = steps * lengths / lengths.sum()
    counts = np.maximum(1, np.floor(share).astype(np.int64))
    while counts.sum() != steps:  # at most `segments` rounds: hand out (or take back) one step at a time
        if counts.sum() < steps:
            counts[np.argmax(share - counts)] += 1
        else:
            counts[np.argmax(np.where(counts > 1, counts - share, -np.inf))] -= 1
    pieces = [cut(a, b, n) for a, b, n in zip(bounds[:-1], bounds[1:], counts, strict=True)]
    times = np.concatenate([*pieces, bounds[-1:]])
    ends = np.concatenate([[0], np.cumsum(counts)])
    return times, ends[-len(sched.times) :].astype(np.int64)


def _teacher_states(
    teacher: TeacherRunner, noise: torch.Tensor, indices: np.ndarray, rows: torch.Tensor
) -> torch.Tensor:
    """(B, K + 1, ...) teacher states at the schedule's grid ``indices``; memory: one batch's trajectory.
    ``rows``: the batch's global noise rows (a bank of conditionings pairs with them)."""
    traj = teacher(noise, rows)
    index = torch.tensor(indices.tolist(), device=traj.states.device)
    return traj.states.index_select(0, index).transpose(0, 1).contiguous()


SHARD_FORMAT = "boss_fast.pair_shard"
SHARD_VERSION = 1


def _shard_header(key: str, start: int, stop: int, shape: tuple[int, ...]) -> dict[str, str]:
    """The common checkpoint header of one pair-cache shard (safetensors metadata: strings)."""
    header = make_header(SHARD_FORMAT, SHARD_VERSION, key=key, start=start, stop=stop, shape=shape)
    return header_strings(header)


def _load_shard(path: str, header: dict[str, str], expected: tuple[int, ...]) -> torch.Tensor | None:
    """A finished shard's states, None when absent or unreadable (recompute); a shard of another run is
    refused by name (ValueError)."""
    if not os.path.exists(path):
        return None
    try:
        with safe_open(path, framework="pt") as f:
            stored = f.metadata() or {}
            states = f.get_tensor("states")
    except (OSError, KeyError, RuntimeError, ValueError, SafetensorError):
        return None  # unreadable (the write is atomic, so this is rare): recompute
    check_header(stored, header, path, "pair-cache shard", remedy="delete it")
    if tuple(states.shape) != expected:
        raise ValueError(f"pair-cache shard {path} was written for another shape; delete it")
    # Shards written before the checksum have none: read as they were.
    if CHECKSUM_KEY in stored and stored[CHECKSUM_KEY] != value_digest(states):
        raise ValueError(
            f"pair-cache shard {path} fails its checksum ({CHECKSUM_KEY} does not match its states): the "
            "file was corrupted or edited; delete it"
        )
    return states


def _shard_states(
    teacher: TeacherRunner,
    noise: torch.Tensor,
    indices: np.ndarray,
    batch_size: int,
    device: torch.device,
    folder: str | None,
    progress: bool,
) -> torch.Tensor:
    """(M, K + 1, ...) states, batch by batch (the engine's ``Shard``); each batch is a cache shard under
    ``folder`` when set, with the common header (format, version, the folder's key, its rows and shape).

    Under torch.distributed, rank r computes shards r, r + W, ... and broadcasts them, so the teacher's cost
    is split across ranks and every rank ends with the same tensor.
    """
    m, k1 = noise.shape[0], len(indices)
    shard = Shard.of_this_process(m, batch_size)
    out = noise.new_empty((m, k1, *noise.shape[1:]), device=device)
    with progress_bar(shard.num_batches, 0, progress, "straightening pairs") as bar:
        for b in range(shard.num_batches):
            start, stop = shard.span(b)
            owner = b % shard.world
            if owner == shard.rank:
                out[start:stop] = _one_shard(teacher, noise, indices, (start, stop), device, folder)
            if shard.world > 1:
                torch.distributed.broadcast(out[start:stop], src=owner)
            bar.update(1)
    return out


def _one_shard(teacher, noise, indices, span: tuple[int, int], device, folder: str | None) -> torch.Tensor:
    """One batch's (B, K + 1, ...) states at the teacher grid's ``indices``: from its cache shard, or
    computed."""
    start, stop = span
    shape = (stop - start, len(indices), *noise.shape[1:])
    path = header = states = None
    if folder is not None:
        path = os.path.join(folder, f"shard{start:09d}-{stop:09d}.safetensors")
        header = _shard_header(os.path.basename(folder), start, stop, shape)
        states = _load_shard(path, header, shape)
    if states is None:
        rows = torch.arange(start, stop, device=device)
        states = _teacher_states(teacher, noise[start:stop].to(device), indices, rows).cpu()
        if path is not None:
            states = states.contiguous()
            blob = save({"states": states}, metadata={**header, CHECKSUM_KEY: value_digest(states)})
            write_file(path, lambda f, b=blob: f.write(b))
    return states.to(device=device, dtype=noise.dtype)


def _flatten_pairs(states: torch.Tensor, times: np.ndarray) -> StraighteningPairs:
    m, k = states.shape[0], states.shape[1] - 1
    rest = states.shape[2:]
    t = torch.tensor(times.tolist(), dtype=states.dtype, device=states.device)
    return StraighteningPairs(
        start=states[:, :-1].reshape(m * k, *rest),
        end=states[:, 1:].reshape(m * k, *rest),
        t_start=t[:-1].repeat(m),
        t_end=t[1:].repeat(m),
    )


def straightening_pairs(
    teacher: VelocityFn,
    sched: Schedule,
    noise: torch.Tensor,
    grid: int | Sequence[float] | np.ndarray = 100,
    solver: str | None = None,
    *,
    batch_size: int = 500,
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    mode: str | None = None,
    pair_teacher: PairTeacher | None = None,
) -> StraighteningPairs:
    """The (x at tau_k, x at tau_{k+1}, tau_k, tau_{k+1}) pairs of the teacher's fine trajectory.

    Runs ``teacher_trajectory`` on ``sched.grid`` for the noises in batches of ``batch_size`` (memory: one
    batch's (N, B, ...) trajectory plus the (M, K + 1, ...) kept states) and keeps the states at
    ``sched.indices``; with an Euler teacher they equal a direct teacher run bit for bit. The teacher always
    runs from the noise at ``grid[0]`` (the search's targets are its states); the first interval's input is
    the schedule's start state at tau_0 (``Schedule.start``: the noise itself for "zero" and "noise",
    ``(1 - tau_0) * noise`` for "scaled"), so a schedule that starts later is straightened from where its
    sampler starts, onto the teacher's trajectory. ``pair_teacher`` trades the pairs' accuracy for the
    teacher's cost (M x steps x the solver's evaluations per step: 1 Euler, 2 Heun, 4 RK4).

    Args:
        teacher: ``velocity(x, t)``; t = 0 noise, t = 1 data. A bank of P conditionings (a ``for_rows``
            method, :func:`boss_fast.ode.for_rows`) runs noise m with conditioning m mod P, whatever
            ``batch_size``.
        sched: a ``Schedule`` chosen on ``grid`` with ``solver``; anything else raises.
        noise: (M, ...) floating tensor, the teacher's states at t = sched.grid[0] (and the start states').
        grid: an int n (``uniform_grid(n)``) or explicit times; must equal ``sched.grid``.
        solver: the teacher's solver; None (default) takes ``sched.solver``, anything else must equal it.
        batch_size: noises per teacher batch, and per cache shard.
        cache_dir: if set (``teacher`` must then be an ``nn.Module``), every batch is a shard file under
            ``cache_dir/<key>/`` written atomically; the key hashes the teacher's weights, the grid, the
            indices, the solver, the noise and ``batch_size``, so later runs (and concurrent ones) reuse
            finished shards and never mix foreign ones.
        device: where the teacher runs; default the noise's device.
        mode: None runs ``teacher_trajectory``'s plain loop; "eager", "compile", "cuda_graph" or "auto" runs
            the teacher on a recording :class:`boss_fast.sampler.Sampler`, built once per batch shape and
            replayed (the same states in "eager").
        pair_teacher: :class:`~boss_fast.straighten.PairTeacher`; None: BOSS's own (``solver`` on
            ``sched.grid``). Its ``steps`` run on :func:`pair_grid`, its ``solver`` instead, and "adaptive"
            ``spacing`` cuts the steps by :func:`pair_density` of an Euler pilot of the first ``PILOT_NOISES``
            noises on ``sched.grid`` (``PILOT_NOISES * (len(grid) - 1)`` more evaluations, paid again when
            the pairs are cached: the cuts key the cache).
    Returns:
        ``StraighteningPairs`` with M * K rows (row m * K + k), on ``device``, in the noise's dtype.

    Example:
        >>> import boss_fast as bf
        >>> cost = np.triu(np.subtract.outer(np.arange(5.0), np.arange(5.0)) ** 2, 1)  # (j - i)^2
        >>> sched = bf.schedules_from_cost(cost, 2, grid=bf.uniform_grid(4))[2]
        >>> pairs = straightening_pairs(lambda x, t: -x, sched, torch.randn(3, 2), grid=4)
        >>> pairs.start.shape, pairs.t_start.tolist()[:2]  # 3 noises x 2 steps
        (torch.Size([6, 2]), [0.0, 0.5])
    """
    sched = check_schedule(sched, grid, solver)
    solver = check_teacher(sched.solver if solver is None else solver, mode)
    noise = check_noise(noise)
    batch_size = check_int(batch_size, "batch_size")
    device = torch.device(device) if device is not None else noise.device
    if cache_dir is not None and not isinstance(teacher, nn.Module):  # before the pilot: refused before work
        raise TypeError(
            "cache_dir needs the teacher as an nn.Module: its weights' fingerprint keys the cache, and a "
            f"plain {type(teacher).__name__} cannot be told apart from another"
        )
    pt = _pair_teacher(pair_teacher)
    path, solver = _teacher_path(sched, solver, mode, pt, _pilot(teacher, sched, noise, device, pt, solver))
    folder = None if cache_dir is None else _cache_folder(cache_dir, teacher, path, noise, solver, batch_size)
    runner = TeacherRunner(teacher, path[0], solver, mode, record="states")
    states = _shard_states(runner, noise, path[1], batch_size, device, folder, progress)
    # The first interval starts where the sampler does: the rule's state at tau_0, not the teacher's (which
    # ran from the noise at grid[0], and whose states stay every target). For "zero" both are the noise.
    first = noise.to(device=states.device, dtype=states.dtype)
    states[:, 0] = start_state(first, sched.start, float(sched.times[0]))
    return _flatten_pairs(states, sched.times)


def _cache_folder(cache_dir, teacher, path, noise: torch.Tensor, solver: str, batch_size: int) -> str:
    """The pair cache's folder of this teacher, path, solver, noise and shard size, created if new."""
    folder = os.path.join(os.fspath(cache_dir), _cache_key(teacher, path, noise, solver, batch_size))
    os.makedirs(folder, exist_ok=True)
    return folder


def _pair_teacher(pair_teacher: object) -> PairTeacher:
    if pair_teacher is None:
        return PairTeacher()
    if not isinstance(pair_teacher, PairTeacher):
        raise TypeError(f"pair_teacher must be a PairTeacher or None, got {type(pair_teacher).__name__}")
    return pair_teacher


def _pilot(
    teacher: VelocityFn, sched: Schedule, noise: torch.Tensor, device: torch.device, pt: PairTeacher,
    solver: str,
) -> np.ndarray | None:  # fmt: skip
    """The "adaptive" spacing's density (:func:`pair_density` of an Euler pilot on ``sched.grid`` from the
    first ``PILOT_NOISES`` noises); None for "uniform" (or a flow the pilot saw straight)."""
    if pt.spacing == "uniform":
        return None
    if (pt.solver or solver) == "dopri5":
        raise ValueError(
            "pair_spacing 'adaptive' cuts pair_steps fixed steps, but the pairs' teacher is dopri5 (the "
            "schedule's solver): set a fixed-step pair_solver, or pair_spacing 'uniform'"
        )
    density = pair_density(teacher, noise[:PILOT_NOISES].to(device), sched.grid)
    if rank_world()[1] > 1:  # every rank cuts rank 0's grid, whatever its float rounding
        shared = torch.zeros(len(sched.grid) - 1, dtype=torch.float64, device=device)
        if density is not None:
            shared.copy_(torch.from_numpy(density))
        torch.distributed.broadcast(shared, src=0)
        density = shared.cpu().numpy() if bool(shared.gt(0).all()) else None
    return density


def _teacher_path(
    sched: Schedule, solver: str, mode: str | None, pt: PairTeacher, density: np.ndarray | None
) -> tuple[tuple[np.ndarray, np.ndarray], str]:
    """((teacher grid, kept indices), teacher solver) of the pairs: the schedule's own grid and ``solver``,
    or :func:`pair_grid` (cut by ``density`` if given) with the pair teacher's steps and solver where set."""
    path = (sched.grid, sched.indices) if pt.steps is None else pair_grid(sched, pt.steps, density)
    if pt.solver is not None:
        solver = check_teacher(pt.solver, mode)
    return path, solver
