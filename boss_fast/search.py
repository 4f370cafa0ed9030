"""The search for a schedule from a velocity model (BOSS stage 1 end to end): stream noise batches through the
teacher, reduce the cost matrix, solve the DP.

``cost_matrix`` runs the teacher (:class:`boss_fast.trajectories.TeacherRunner`) batch after batch and adds
the per-batch (sum, count) of :func:`boss_fast.cost.trajectory_cost_sums`; memory is one batch's trajectory.
Around that pure loop: a checkpoint rewritten atomically after every batch (resume is bit-identical), and
torch.distributed (rank r of W runs batches r, r + W, ...; the float64 (sum, count) are all-reduced).
``optimal_schedules`` draws seeded noise, runs the same loop (or the global objective's DP) and returns every
budget's ``Schedule`` from one search; its knobs live in one frozen, validated ``SearchSettings``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from boss_fast._backends import DP_BACKENDS
from boss_fast._checkpoint import noise_identity, stored_array, stored_count
from boss_fast._identity import checkpoint_model_key, model_fingerprint
from boss_fast._runtime import module_placement
from boss_fast._validation import (
    METRICS,
    START_RULES,
    as_times,
    check_choice,
    check_dtype,
    check_float,
    check_int,
    check_noise,
    check_shape,
    check_store_dir,
    check_teacher,
)
from boss_fast.cost import trajectory_cost_sums
from boss_fast.engine import STORES, WIDE_MODES, Checkpoint, Shard, progress_bar
from boss_fast.global_objective import GlobalPass, accumulate_global, global_paths
from boss_fast.grids import resolve_grid
from boss_fast.ode import VelocityFn
from boss_fast.refine import DPS, CoarseToFine, coarse_to_fine_table
from boss_fast.schedule import OBJECTIVES, Schedule, ScheduleSet, schedules_from_cost
from boss_fast.trajectories import TeacherRunner, seeded_noise

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "MAX_GRID",
    "SearchSettings",
    "auto_rounds",
    "cost_matrix",
    "optimal_schedules",
]

DEFAULT_OBJECTIVE = "global"
# The largest grid a search takes: N = 100,001 points, whose (N, N) float64 cost sums (either objective keeps
# one such block, docs/search_memory.md) are 74.5 GiB; 10^12, accepted before, failed allocating 7.28 TiB.
MAX_GRID = 100_000
_TOO_FINE = (
    f"at most MAX_GRID = {MAX_GRID} steps (N = {MAX_GRID + 1} points, whose (N, N) float64 sums are 74.5 GiB)"
)
# start=None resolves to this rule (SearchSettings.start_rule).
DEFAULT_START = "zero"
# The teacher each objective uses when none is given: BOSS's Euler (the published setting), and for the
# global objective (whose targets are the teacher's states) the most accurate fixed-step solver that keeps
# every budget up to K = 10 on a 100-step grid within 12x the local search's evaluations: Heun (200 + 856
# evaluations per sample vs 100, 10.6x; RK4 would make it 12.6x). On the bundled 2-D mixtures (std 0.2 and
# 0.05) Heun and RK4 teachers gave the same global schedules at every K = 2..10.
_DEFAULT_SOLVER = {"local": "euler", "global": "heun"}

# num_samples="auto": rounds of AUTO_START, 2 x, 4 x ... noises (nested: noise m is the same in every round),
# up to max_samples (default AUTO_CAP); the search stops after the first round in which no knot of any budget
# moved by more than AUTO_TOLERANCE grid points from the previous round's. Two, not zero or one: on the 2-D
# mixtures of std 0.05-0.1 the full DP's knots still moved 1-3 grid points between 512 and 1024 noises; the
# moves that cost are far larger (17-21 points from 128 to 256 noises on five Gaussians, where 128 noises'
# schedule has +18% held-out RMSE at K = 7 against 256's) (benchmarks/results/auto_samples.md).
AUTO_START = 32
AUTO_CAP = 1024
AUTO_TOLERANCE = 2

CHECKPOINT_FORMAT = "boss_fast.cost_checkpoint"
CHECKPOINT_VERSION = 2  # 2: the wider model fingerprint, checkpoint_key, checksums and run identity


# ---------------------------------------------------------------------------- distribution, checkpoint


def _load_counters(ckpt: Checkpoint, n: int, sizes: list[int]) -> tuple[np.ndarray, int, int]:
    """(sums, count, batches done) of a fresh run, or what this run's checkpoint holds (checked)."""
    stored = ckpt.load() if ckpt is not None else None
    if stored is None:
        return np.zeros((n, n)), 0, 0
    what = "cost checkpoint"
    sums = stored_array(stored, "sums", (n, n), np.float64, ckpt.path, what)
    count, done = (stored_count(stored, key, ckpt.path, what) for key in ("count", "batches_done"))
    _check_counters(ckpt.path, sums, count, done, sizes)
    return sums, count, done


def _check_counters(path: str, sums: np.ndarray, count: int, done: int, sizes: list[int]) -> None:
    """Refuse (ValueError naming ``path`` and the field) counters this run could not have written.

    ``sizes``: the samples of each of this rank's batches, in order.
    """
    if not 0 <= done <= len(sizes):
        raise ValueError(
            f"cost checkpoint {path}: batches_done = {done} is outside 0 .. {len(sizes)}, this rank's batches"
        )
    if count != sum(sizes[:done]) or (done > 0 and count <= 0):
        raise ValueError(
            f"cost checkpoint {path}: count = {count}, but its {done} batches done hold {sum(sizes[:done])} "
            "samples"
        )
    if not np.all(np.isfinite(sums)) or np.any(sums < 0):
        raise ValueError(f"cost checkpoint {path}: sums holds non-finite or negative values")


# ------------------------------------------------------------------------------------------- streaming


def _accumulate_cost(
    teacher: TeacherRunner,
    make_batch: Callable[[int, int], torch.Tensor],
    num_samples: int,
    *,
    batch_size: int,
    metric: str,
    device: torch.device | str | None,
    progress: bool,
    checkpoint: str | os.PathLike | None,
    identity: dict[str, str],
) -> np.ndarray:
    """Stream ``num_samples`` noises through the teacher in batches and reduce the cost (sum, count).

    ``make_batch(start, stop)`` returns noises start .. stop - 1. The engine's ``Shard``: rank r of W runs
    batches r, r + W, ...; each rank checkpoints its own share (``Checkpoint``). Assumes validated arguments.
    ``identity`` (noise digest, dtype, ...) goes into the checkpoint header.
    """
    shard = Shard.of_this_process(num_samples, batch_size)
    mine = shard.mine
    run = {"times": teacher.times, "metric": metric, "solver": teacher.solver, "num_samples": num_samples,
           "batch_size": batch_size, **identity}  # fmt: skip
    ckpt = Checkpoint.open(checkpoint, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, run, "cost checkpoint")
    sums, count, done = _load_counters(ckpt, len(teacher.times), shard.sizes)
    with progress_bar(len(mine), done, progress, "cost matrix") as bar:
        for b in mine[done:]:
            start, stop = shard.span(b)
            noise = make_batch(start, stop)
            if device is not None:
                noise = noise.to(device)
            traj = teacher(noise, torch.arange(start, stop, device=noise.device))
            batch_sums, batch_count = trajectory_cost_sums(traj.states, traj.velocities, traj.times, metric)
            sums, count, done = sums + batch_sums, count + batch_count, done + 1
            del traj  # free this batch's trajectory before the next one is allocated
            if ckpt is not None:
                ckpt.save(sums=sums, count=np.int64(count), batches_done=np.int64(done))
            bar.update(1)
    sums, count = shard.reduce(sums, count)
    return sums / count


def cost_matrix(
    velocity: VelocityFn,
    noise: torch.Tensor,
    grid: Sequence[float] | np.ndarray | torch.Tensor,
    batch_size: int = 256,
    solver: str = "euler",
    metric: str = "l2sq",
    device: torch.device | str | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    *,
    mode: str | None = None,
    checkpoint_key: str | None = None,
) -> np.ndarray:
    """The BOSS cost matrix of a velocity model, averaged over ``noise``, (N, N) float64 numpy.

    Runs the teacher (``teacher_trajectory``) on ``grid`` for batches of ``batch_size`` noises and reduces
    per-batch sums (``trajectory_cost_sums``): memory is one batch's trajectory whatever the number of
    samples. The result depends on the batching only through float64 summation order.

    Args:
        velocity: ``velocity(x, t)`` (t = 0 noise, t = 1 data), already on ``device``.
        noise: (M, ...) floating tensor, the M teacher start points (reference: M = 100 Gaussian noises).
        grid: (N,) strictly increasing grid times in [0, 1] (e.g. ``uniform_grid(100)``).
        batch_size: samples per teacher batch, >= 1.
        solver: teacher solver, "euler" (reference), "heun", "rk4" or "dopri5" (torchdiffeq at its default
            tolerances, ``teacher_trajectory``; mode=None only).
        metric: "l2sq" (BOSS) or "l2" (GITS).
        device: where the teacher runs (batches of noise are moved there); None keeps the noise's device.
        progress: show a tqdm bar over batches (rank 0 only).
        checkpoint: path of a ``.npz`` rewritten atomically after every batch with the partial (sum, count),
            the batch index and a header (grid, metric, solver, sample count, batch size, noise digest and
            the model's fingerprint when it is an ``nn.Module``). Rerunning with the same path resumes and
            returns what an uninterrupted run returns, bit for bit; a checkpoint of another run is refused
            (ValueError). The finished checkpoint is kept, so a rerun returns at once. Under
            torch.distributed each rank writes ``<root>.rank{r}-of-{W}<ext>``. A velocity that is not an
            ``nn.Module`` has no fingerprint: ``checkpoint`` then needs ``checkpoint_key`` (ValueError
            otherwise).
        mode: None runs ``teacher_trajectory``'s plain loop; "eager", "compile", "cuda_graph" or "auto"
            runs the teacher on a recording :class:`boss_fast.sampler.Sampler`, built once per batch shape
            and replayed for every batch (on CUDA, "cuda_graph" captures the whole grid as one graph).
        checkpoint_key: the velocity's identity recorded in the checkpoint header (besides the module's
            fingerprint): a name that changes whenever the function or what it depends on changes.

    Under torch.distributed (initialised process group), rank r of W runs batches r, r + W, ..., the
    float64 (sum, count) are all-reduced and every rank returns the same matrix.

    Example:
        >>> constant = lambda x, t: torch.ones_like(x)
        >>> cost = cost_matrix(constant, torch.zeros(4, 2), [0.0, 0.5, 1.0], progress=False)
        >>> cost.shape, float(cost.max())  # a constant velocity: every Euler jump is exact
        ((3, 3), 0.0)
    """
    noise = check_noise(noise)
    t = as_times(grid, "grid")
    batch_size = check_int(batch_size, "batch_size")
    solver = check_teacher(solver, mode)
    metric = check_choice(metric, METRICS, "metric")
    model = checkpoint_model_key(velocity, checkpoint, checkpoint_key)
    identity = {} if checkpoint is None else noise_identity(noise, model)
    return _accumulate_cost(
        TeacherRunner(velocity, t, solver, mode),
        lambda start, stop: noise[start:stop],
        noise.shape[0],
        batch_size=batch_size,
        metric=metric,
        device=device,
        progress=progress,
        checkpoint=checkpoint,
        identity=identity,
    )


# ------------------------------------------------------------------------------------------- settings


def _check_grid(grid: object) -> int | tuple[float, ...]:
    """``grid`` as stored in the settings: an int n (``uniform_grid(n)``, 1 <= n <= :data:`MAX_GRID`) or the
    grid times as a tuple of at most ``MAX_GRID + 1`` floats (validated, exact: every float64 is a Python
    float)."""
    if isinstance(grid, int | np.integer) and not isinstance(grid, bool | np.bool_):
        n = check_int(grid, "grid")
        if n > MAX_GRID:
            raise ValueError(f"grid must be {_TOO_FINE}, got grid={n}")
        return n
    if isinstance(grid, str | bytes) or np.ndim(grid) == 0:
        raise TypeError(f"grid must be an int n (uniform_grid(n)) or a 1-D sequence of times, got {grid!r}")
    times = resolve_grid(grid)
    if len(times) > MAX_GRID + 1:
        raise ValueError(f"grid must be {_TOO_FINE}, got {len(times)} times")
    return tuple(times.tolist())


def _check_samples(num_samples: object, max_samples: object) -> None:
    """num_samples: an int >= 1 or "auto"; max_samples: None, or the cap (>= AUTO_START) of "auto"."""
    if isinstance(num_samples, str):
        if num_samples != "auto":
            raise ValueError(f"num_samples must be an integer >= 1 or 'auto', got {num_samples!r}")
        if max_samples is not None:
            check_int(max_samples, "max_samples", minimum=AUTO_START)
        return
    check_int(num_samples, "num_samples")
    if max_samples is not None:
        raise ValueError(f"max_samples caps num_samples='auto', got num_samples={num_samples!r}")


def _check_objective_knobs(settings: SearchSettings) -> None:
    """The knobs that belong to one objective (discount, backend: local; dp: global), refused with another."""
    if settings.objective == "global" and settings.discount != 1.0:
        raise ValueError(
            "discount weights the local objective's steps; objective='global' takes 1.0, got "
            f"{settings.discount}"
        )
    if settings.objective == "global" and settings.backend != "auto":
        raise ValueError(
            "backend selects the Bellman DP's kernel of objective='local'; objective='global' runs its own "
            f"DP in numpy, got backend={settings.backend!r}"
        )
    if settings.dp != "full" and settings.objective != "global":
        raise ValueError(
            f"dp={settings.dp!r} is a route to objective='global'; objective={settings.objective!r} takes "
            "'full'"
        )


@dataclass(frozen=True)
class SearchSettings:
    """Every knob of a schedule search (``optimal_schedules``), validated at construction (a ValueError or
    TypeError naming the field); frozen, so one object describes one search (``dataclasses.replace`` for
    another). The Python API, ``boss-fast schedule`` and the demo build one.

    Attributes:
        grid: an int n for ``uniform_grid(n)`` (default 100) or the grid times (N,) in [0, 1], stored as a
            tuple of floats; at most :data:`MAX_GRID` = 100,000 steps (the (N, N) float64 sums: 74.5 GiB).
        num_samples: the noises (reference: 100), or "auto": rounds of 32, 64, ... noises until no knot of
            any budget moves by more than 2 grid points (:func:`auto_rounds`), capped by ``max_samples``
            (None: 1024; only with "auto").
        batch_size: noises per teacher batch (and the global objective's rows per model call), >= 1.
        seed: of the noise (``seeded_noise``: sample m depends only on (seed, m)), >= 0.
        objective: "global" (default: the DP over the sampler's own states, the error at t = 1,
            ``boss_fast.global_objective``) or "local" (BOSS: the sum of one-step errors from the teacher's
            states, ``boss_fast.cost`` + ``boss_fast.bellman``).
        solver: the teacher, "euler", "heun", "rk4" or "dopri5" (mode None only); None: "heun" for the
            global objective (its targets; the most accurate fixed-step teacher within 12x the local
            search's evaluations at K = 10), "euler" for the local one (BOSS's reference).
        metric: "l2sq" (BOSS) or "l2" (GITS).
        discount: the local DP's discount on later steps (GITS); 1.0 is BOSS (the global objective: 1.0).
        dp: the global DP, "full" (default) or "coarse" (``boss_fast.refine``: 0.35-0.38x the
            evaluations).
        store: where the global objective keeps its per-sample rows between levels: "device" (default),
            "host" (pinned for CUDA) or "disk" (memory-mapped files, deleted at the end); the schedule does
            not depend on it (docs/search_memory.md). The local objective keeps one batch's trajectory.
        store_dir: the folder of "disk"'s files (None: the checkpoint's folder, else the system's temporary
            directory); only with store="disk".
        mode: None runs the teacher's plain loop; "eager", "compile", "cuda_graph" or "auto" runs it on a
            recording ``Sampler`` (and the global objective's wide calls alike; "auto": cuda_graph on CUDA,
            eager elsewhere, ``boss_fast.engine.resolve_wide_mode``).
        backend: the local DP's kernel, "auto" or one of ``boss_fast.bellman``'s (the global objective:
            "auto").
        start: where sampling starts (``boss_fast._validation.START_RULES``): "zero" (pinned at the grid's
            first point, from the noise: BOSS as published), "noise" (the search picks the first time t_s and
            the noise itself is the state there, as a diffusers pipeline's txt2img) or "scaled" (the state at
            t_s is ``(1 - t_s) * noise``, as ComfyUI's flow models); None: ``DEFAULT_START``
            (:attr:`start_rule`). The schedules carry the rule (``Schedule.start``).

    Example:
        >>> s = SearchSettings(grid=50, num_samples=64, objective="local")
        >>> s.teacher, s.times().shape, SearchSettings().objective
        ('euler', (51,), 'global')
    """

    grid: int | tuple[float, ...] = 100
    num_samples: int | str = 256
    max_samples: int | None = None
    batch_size: int = 256
    seed: int = 0
    objective: str = DEFAULT_OBJECTIVE
    solver: str | None = None
    metric: str = "l2sq"
    discount: float = 1.0
    dp: str = "full"
    store: str = "device"
    store_dir: str | os.PathLike | None = None
    mode: str | None = None
    backend: str = "auto"
    start: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", _check_grid(self.grid))
        _check_samples(self.num_samples, self.max_samples)
        if self.num_samples != "auto":
            object.__setattr__(self, "num_samples", int(self.num_samples))
        if self.max_samples is not None:
            object.__setattr__(self, "max_samples", int(self.max_samples))
        object.__setattr__(self, "batch_size", check_int(self.batch_size, "batch_size"))
        object.__setattr__(self, "seed", check_int(self.seed, "seed", minimum=0))
        check_choice(self.objective, OBJECTIVES, "objective")
        if self.mode is not None:
            check_choice(self.mode, WIDE_MODES, "mode")
        if self.solver is not None:
            check_teacher(self.solver, self.mode)
        check_choice(self.metric, METRICS, "metric")
        object.__setattr__(self, "discount", check_float(self.discount, "discount"))
        if self.discount <= 0:
            raise ValueError(f"discount must be > 0, got {self.discount}")
        check_choice(self.dp, DPS, "dp")
        check_choice(self.store, STORES, "store")
        check_store_dir(self.store_dir, self.store)
        check_choice(self.backend, ("auto", *DP_BACKENDS), "backend")
        if self.start is not None:
            check_choice(self.start, START_RULES, "start")
        _check_objective_knobs(self)

    @property
    def start_rule(self) -> str:
        """The start rule this search runs: ``start``, or ``DEFAULT_START``."""
        return DEFAULT_START if self.start is None else self.start

    @property
    def teacher(self) -> str:
        """The teacher's solver this search runs: ``solver``, or the objective's default."""
        return _DEFAULT_SOLVER[self.objective] if self.solver is None else self.solver

    def times(self) -> np.ndarray:
        """The grid times, (N,) float64 (a new array each call)."""
        return resolve_grid(self.grid)


# ------------------------------------------------------------------------------------------- the search


@dataclass(frozen=True)
class _Run:
    """The operational handles of one search (not part of what is searched): where and how it runs."""

    device: torch.device | str | None
    dtype: torch.dtype | None
    progress: bool
    checkpoint: str | os.PathLike | None
    checkpoint_key: str | None


@dataclass(frozen=True)
class _Search:
    """One validated search with a fixed number of noises (both objectives)."""

    settings: SearchSettings
    times: np.ndarray
    shape: tuple[int, ...]
    num_samples: int
    device: torch.device
    dtype: torch.dtype
    fingerprint: str | None
    model: str = ""

    def batch(self, start: int, stop: int) -> torch.Tensor:
        return seeded_noise(self.shape, start, stop, seed=self.settings.seed, dtype=self.dtype)

    def identity(self) -> dict[str, str]:
        return {
            "noise": f"seeded_noise(seed={self.settings.seed})",
            "sample_shape": str(self.shape),
            "dtype": str(self.dtype),
            "model": self.model,
        }


def _validate_search(
    velocity: VelocityFn, shape: Sequence[int], max_steps: int, settings: SearchSettings, run: _Run
) -> tuple[_Search, int]:
    """(the search, max_steps): the checks that need the model or the shape; ``settings`` checked itself."""
    shape = check_shape(shape)
    max_steps = check_int(max_steps, "max_steps")
    times = settings.times()
    if max_steps >= len(times):
        raise ValueError(
            f"max_steps must be < the grid's {len(times)} points (at most {len(times) - 1}), got {max_steps}"
        )
    model_device, model_dtype = module_placement(velocity)
    device = torch.device(run.device) if run.device is not None else (model_device or torch.device("cpu"))
    dtype = check_dtype(run.dtype) or model_dtype or torch.get_default_dtype()
    fingerprint = model_fingerprint(velocity) if isinstance(velocity, torch.nn.Module) else None
    model = checkpoint_model_key(velocity, run.checkpoint, run.checkpoint_key)
    search = _Search(settings, times, shape, settings.num_samples, device, dtype, fingerprint, model)
    return search, max_steps


def _local_cost(velocity: VelocityFn, search: _Search, run: _Run) -> np.ndarray:
    """The local objective's cost matrix over the search's seeded noises."""
    s = search.settings
    return _accumulate_cost(
        TeacherRunner(velocity, search.times, s.teacher, s.mode),
        search.batch,
        search.num_samples,
        batch_size=s.batch_size,
        metric=s.metric,
        device=search.device,
        progress=run.progress,
        checkpoint=run.checkpoint,
        identity=search.identity(),
    )


def _global_schedules(velocity: VelocityFn, search: _Search, max_steps: int, run: _Run) -> ScheduleSet:
    """The global objective's ``ScheduleSet`` (``settings.dp``: "full", every source, or "coarse",
    ``boss_fast.refine``)."""
    s = search.settings
    passes = GlobalPass(batch_size=s.batch_size, solver=s.teacher, metric=s.metric, mode=s.mode,
                        store=s.store, store_dir=s.store_dir)  # fmt: skip
    args = (velocity, search.batch, search.num_samples, search.times, max_steps, passes)
    # "dp" in every header: a checkpoint reader checks the keys this run asks for, so each route names itself
    handles = {"device": search.device, "progress": run.progress, "checkpoint": run.checkpoint,
               "identity": {**search.identity(), "dp": s.dp, "start": s.start_rule}}  # fmt: skip
    if s.dp == "coarse":
        table = coarse_to_fine_table(*args, plan=CoarseToFine(), **handles)
    else:
        table = accumulate_global(*args, **handles)
    return ScheduleSet(
        Schedule(
            times=search.times[path.indices],
            indices=path.indices,
            cost=path.cost,
            grid=search.times,
            metric=s.metric,
            solver=s.teacher,
            num_samples=search.num_samples,
            fingerprint=search.fingerprint,
            shape=search.shape,
            objective="global",
            start=s.start_rule,
        )
        for path in global_paths(table)
    )


def _search(velocity: VelocityFn, shape: Sequence[int], max_steps: int, settings: SearchSettings, run: _Run):
    """One search with a fixed number of noises: every budget 1 .. ``max_steps``."""
    search, max_steps = _validate_search(velocity, shape, max_steps, settings, run)
    if settings.objective == "global":
        return _global_schedules(velocity, search, max_steps, run)
    cost = _local_cost(velocity, search, run)
    return schedules_from_cost(
        cost,
        max_steps,
        grid=search.times,
        discount=settings.discount,
        backend=settings.backend,
        metric=settings.metric,
        solver=settings.teacher,
        num_samples=search.num_samples,
        fingerprint=search.fingerprint,
        shape=search.shape,
        start=settings.start_rule,
    )


def optimal_schedules(
    velocity: VelocityFn,
    shape: Sequence[int],
    max_steps: int,
    settings: SearchSettings | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_key: str | None = None,
) -> ScheduleSet:
    """The optimal schedule of every budget K = 1 .. ``max_steps`` of a velocity model from ONE search, as a
    ``ScheduleSet`` (a read-only mapping ``{K: Schedule}``; ``sset.save(path)``, ``ScheduleSet.load(path)``).

    One budget is the same call read at K: ``optimal_schedules(velocity, shape, K)[K]``. Every budget up to K
    costs what K alone does (the global DP's levels and the local Bellman table do not depend on the largest
    budget asked for), and ``result[k]`` does not depend on ``max_steps``. A local set keeps its cost matrix,
    so ``resample(K)`` for K > max_steps re-solves it exactly; a global set interpolates (``ScheduleSet``).

    Draws ``settings.num_samples`` Gaussian noises (``seeded_noise``: sample m depends only on (seed, m), so
    the draw does not depend on the batch size, the device or the number of processes) and runs the teacher
    on the grid in batches. Then, by ``settings.objective``:

    - "global" (default): the DP over the sampler's own states (``boss_fast.global_objective``; Pei et al.
      2025): the schedule whose Euler sampler ends closest to the teacher at t = 1, on average over the
      noises. About ``max_steps`` x N model evaluations per sample beside the teacher's, in calls of up to
      ``batch_size`` (state, time) rows; memory: see ``settings.store`` and docs/search_memory.md.
    - "local": BOSS as published: the cost matrix of one-step errors from the teacher's states
      (``boss_fast.cost``, memory one batch's trajectory) and the exact Bellman DP (``boss_fast.bellman``).

    Args:
        velocity: ``velocity(x, t)``, t = 0 noise, t = 1 data.
        shape: the shape of ONE sample, without the batch dimension, e.g. (3, 32, 32).
        max_steps: the largest budget K, 1 <= K <= N - 1 (an int).
        settings: what is searched and how (:class:`SearchSettings`); None: its defaults.
        device, dtype: where and in what dtype the teacher runs; default: the model's first floating
            parameter's device and dtype when it is an ``nn.Module``, else CPU and torch's default dtype.
        progress: show a tqdm bar (rank 0 only).
        checkpoint: as in ``cost_matrix``: a ``.npz`` rewritten atomically after every batch (local) or DP
            level (global); rerunning resumes bit for bit, a checkpoint of another run is refused. Not with
            num_samples="auto" (several searches).
        checkpoint_key: as in ``cost_matrix`` (required with ``checkpoint`` for a non-module velocity).

    Returns:
        A ``ScheduleSet`` with ``objective`` set and ``fingerprint`` ``model_fingerprint(velocity)`` (or
        None).

    Example:
        >>> scheds = optimal_schedules(lambda x, t: -x, (2,), 3, SearchSettings(grid=10, num_samples=8))
        >>> [s.steps for s in scheds.values()], scheds[3].objective, float(scheds[2].times[-1])
        ([1, 2, 3], 'global', 1.0)
    """
    settings = SearchSettings() if settings is None else settings
    if not isinstance(settings, SearchSettings):
        raise TypeError(f"settings must be a SearchSettings, got {type(settings).__name__}")
    run = _Run(device, dtype, progress, checkpoint, checkpoint_key)
    if settings.num_samples != "auto":
        return _search(velocity, shape, max_steps, settings, run)
    if checkpoint is not None:
        raise ValueError("num_samples='auto' runs several searches and takes checkpoint=None")
    cap = AUTO_CAP if settings.max_samples is None else settings.max_samples
    return auto_rounds(lambda n: _search(velocity, shape, max_steps, _with_samples(settings, n), run), cap)


def _with_samples(settings: SearchSettings, n: int) -> SearchSettings:
    """``settings`` with a fixed number of noises (one round of "auto")."""
    return replace(settings, num_samples=n, max_samples=None)


def _moved(a: ScheduleSet, b: ScheduleSet) -> int:
    """The largest move of any knot of any budget between two sets of the same budgets, in grid points."""
    return max(int(np.abs(a[k].indices - b[k].indices).max()) for k in a)


def auto_rounds(search: Callable[[int], ScheduleSet], cap: int) -> ScheduleSet:
    """``num_samples="auto"``'s rule over ``search(n)`` (the schedules from the first n noises).

    Rounds of 32, 64, 128, ... noises (noise m is the same in every round; the last round ``cap``); stops
    after the first round in which no knot of any budget moved by more than two grid points from the
    previous round's, and returns that round's schedules, whose ``num_samples`` is the number it used (a
    ``UserWarning`` when the cap stops it first). Every round is a whole search: the evaluations are the
    rounds' sum, about twice the last round's. Deterministic for a seed.

    Example:
        >>> found = auto_rounds(lambda n: optimal_schedules(lambda x, t: -x, (2,), 2,
        ...     SearchSettings(grid=10, num_samples=n)), 1024)
        >>> found[2].num_samples  # 32 and 64 noises agree on this flow
        64
    """
    n, previous = min(AUTO_START, cap), None
    while True:
        found = search(n)
        if previous is not None and _moved(previous, found) <= AUTO_TOLERANCE:
            return found
        if n >= cap:
            warnings.warn(
                f"num_samples='auto' reached max_samples={cap} before the schedules settled (knots still "
                f"moved by more than {AUTO_TOLERANCE} grid points between the last two rounds)",
                UserWarning,
                stacklevel=3,
            )
            return found
        previous, n = found, min(2 * n, cap)
