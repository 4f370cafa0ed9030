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
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from boss_fast._backends import DP_BACKENDS
from boss_fast._bootstrap import bootstrap_statistics, bootstrap_weights, paired_difference, rmse_statistic
from boss_fast._checkpoint import noise_identity, stored_array, stored_count
from boss_fast._identity import checkpoint_model_key, model_fingerprint
from boss_fast._runtime import module_placement
from boss_fast._validation import (
    METRICS,
    START_RULES,
    as_times,
    check_autocast,
    check_choice,
    check_dtype,
    check_float,
    check_int,
    check_noise,
    check_shape,
    check_store_dir,
    check_teacher,
)
from boss_fast.cost import start_cost_sums, trajectory_cost_sums
from boss_fast.engine import (
    STORES,
    WIDE_MODES,
    Checkpoint,
    Shard,
    progress_bar,
)
from boss_fast.global_objective import (
    GlobalPass,
    GlobalTable,
    accumulate_global,
    global_paths,
    level_sources,
    start_extra_evaluations,
    start_sources,
)
from boss_fast.grids import resolve_grid
from boss_fast.ode import VelocityFn, for_rows
from boss_fast.polish import (
    POLISHES,
    EndpointProbe,
    polish_bound,
    polish_paths,
    polish_samples,
    probed_on,
)
from boss_fast.refine import DPS, CoarseToFine, coarse_to_fine_table, window_bound
from boss_fast.schedule import OBJECTIVES, Schedule, ScheduleSet, schedules_from_cost
from boss_fast.trajectories import TeacherRunner, seeded_noise, teacher_evaluations

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "MAX_GRID",
    "SearchBill",
    "SearchMemory",
    "SearchSettings",
    "auto_rounds",
    "cost_matrix",
    "optimal_schedules",
    "search_bill",
    "search_memory",
]

DEFAULT_OBJECTIVE = "global"
# The largest grid a search takes: N = 100,001 points, whose (N, N) float64 cost sums (either objective keeps
# one such block, docs/search_memory.md) are 74.5 GiB; 10^12, accepted before, failed allocating 7.28 TiB.
MAX_GRID = 100_000
_TOO_FINE = (
    f"at most MAX_GRID = {MAX_GRID} steps (N = {MAX_GRID + 1} points, whose (N, N) float64 sums are 74.5 GiB)"
)
# start=None resolves to the objective's rule (SearchSettings.start_rule). Measured
# (benchmarks/results/start_search_*.md, 1000 held-out noises against dopri5): the global search with a
# free "noise" start beats the start pinned at t = 0 at every K = 2..10 on the digits DiT and on
# gmm2d_narrow (K = 2 RMSE 0.2766 -> 0.1695 and 0.2706 -> 0.0360), and "scaled" at every K but the digits'
# FD at K = 3, for 99 more evaluations per noise on a 100-step grid (1155 vs 1056). The local objective with
# any start loses to it everywhere, so objective="local" keeps BOSS as published: pinned.
DEFAULT_START = {"global": "noise", "local": "zero"}
# The global DP's route when ``dp`` is None: the coarse-to-fine DP (with the default start polish: about half
# the full DP's evaluations, held-out RMSE no worse than the full DP's at any K on three models and better at
# most, for search seed 0 (benchmarks/results/search_budget_*.md) and in the mean over ten search seeds
# (benchmarks/results/search_seeds_*.md)).
DEFAULT_DP = "coarse"
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
# The global objective's "auto" stops when the previous round's schedules are, at 95%, at most this share of
# RMSE worse than the new round's (geometric mean over the budgets) on the new round's held-out half; 1000
# resamples.
AUTO_MARGIN = 0.02
AUTO_RESAMPLES = 1000

CHECKPOINT_FORMAT = "boss_fast.cost_checkpoint"
CHECKPOINT_VERSION = 2  # 2: the wider model fingerprint, checkpoint_key, checksums and run identity


# ---------------------------------------------------------------------------- distribution, checkpoint


def _load_counters(
    ckpt: Checkpoint, n: int, sizes: list[int], free: bool
) -> tuple[np.ndarray, np.ndarray | None, int, int]:
    """(sums, start sums (a free start's; else None), count, batches done) of a fresh run, or what this run's
    checkpoint holds (checked)."""
    stored = ckpt.load() if ckpt is not None else None
    if stored is None:
        return np.zeros((n, n)), (np.zeros(n) if free else None), 0, 0
    what = "cost checkpoint"
    sums = stored_array(stored, "sums", (n, n), np.float64, ckpt.path, what)
    starts = stored_array(stored, "start_sums", (n,), np.float64, ckpt.path, what) if free else None
    count, done = (stored_count(stored, key, ckpt.path, what) for key in ("count", "batches_done"))
    _check_counters(ckpt.path, sums, count, done, sizes)
    if free:
        _check_counters(ckpt.path, starts, count, done, sizes, "start_sums")
    return sums, starts, count, done


def _check_counters(
    path: str, sums: np.ndarray, count: int, done: int, sizes: list[int], name: str = "sums"
) -> None:
    """Refuse (ValueError naming ``path`` and the field) counters this run could not have written.

    ``sizes``: the samples of each of this rank's batches, in order; ``name``: the sums' field.
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
        raise ValueError(f"cost checkpoint {path}: {name} holds non-finite or negative values")


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
    start_rule: str = "zero",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Stream ``num_samples`` noises through the teacher in batches and reduce the cost (sum, count); with a
    free ``start_rule`` ("noise", "scaled") the start costs too (:func:`boss_fast.cost.start_cost_sums`,
    from the same trajectories: no model evaluation). Returns (cost (N, N), start costs (N,) or None).

    ``make_batch(start, stop)`` returns noises start .. stop - 1. The engine's ``Shard``: rank r of W runs
    batches r, r + W, ...; each rank checkpoints its own share (``Checkpoint``). Assumes validated arguments.
    ``identity`` (noise digest, dtype, ...) goes into the checkpoint header, and the start rule (always: a
    pinned run must refuse a free-start file, whose sums it does not ask for).
    """
    shard = Shard.of_this_process(num_samples, batch_size)
    mine, free = shard.mine, start_rule != "zero"
    run = {"times": teacher.times, "metric": metric, "solver": teacher.solver, "num_samples": num_samples,
           "batch_size": batch_size, **identity, "start": start_rule}  # fmt: skip
    ckpt = Checkpoint.open(checkpoint, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, run, "cost checkpoint")
    sums, starts, count, done = _load_counters(ckpt, len(teacher.times), shard.sizes, free)
    with progress_bar(len(mine), done, progress, "cost matrix") as bar:
        for b in mine[done:]:
            start, stop = shard.span(b)
            noise = make_batch(start, stop)
            if device is not None:
                noise = noise.to(device)
            traj = teacher(noise, torch.arange(start, stop, device=noise.device))
            batch_sums, batch_count = trajectory_cost_sums(traj.states, traj.velocities, traj.times, metric)
            if free:
                starts = starts + start_cost_sums(traj.states, traj.times, start_rule, metric)[0]
            sums, count, done = sums + batch_sums, count + batch_count, done + 1
            del traj  # free this batch's trajectory before the next one is allocated
            if ckpt is not None:
                extra = {"start_sums": starts} if free else {}
                ckpt.save(sums=sums, count=np.int64(count), batches_done=np.int64(done), **extra)
            bar.update(1)
    if free:
        starts, _ = shard.reduce(starts, count)
    sums, count = shard.reduce(sums, count)
    return sums / count, (None if starts is None else starts / count)


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
    )[0]


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
    if settings.dp not in (None, "full") and settings.objective != "global":
        raise ValueError(
            f"dp={settings.dp!r} is a route to objective='global'; objective={settings.objective!r} takes "
            "'full'"
        )


def _check_polish(settings: SearchSettings) -> None:
    """``polish`` is None or one of ``POLISHES``; "start" needs a free start, anything but "none" the global
    objective (whose DP keeps the teacher's endpoints to measure moves against)."""
    if settings.polish is None:
        return
    check_choice(settings.polish, POLISHES, "polish")
    if settings.polish != "none" and settings.objective != "global":
        raise ValueError(
            f"polish={settings.polish!r} polishes the global objective's schedules on their endpoint error; "
            f"objective={settings.objective!r} takes polish 'none' (or None)"
        )
    if settings.polish == "start" and settings.start_rule == "zero":
        raise ValueError(
            "polish='start' moves the start knot, and start 'zero' pins it at t = 0: use a free start "
            f"({', '.join(repr(r) for r in START_RULES if r != 'zero')}), polish 'all' or 'none'"
        )


def _check_start_cap(settings: SearchSettings) -> None:
    """start_cap: None, or with a free start a grid point 0 .. N - 2."""
    if settings.start_cap is None:
        return
    cap = check_int(settings.start_cap, "start_cap", minimum=0)
    if settings.start_rule == "zero":
        raise ValueError(f"start_cap bounds a free start; start 'zero' takes None, got {cap}")
    start_sources(settings.start_rule, len(settings.times()), cap)  # ValueError beyond the grid


@dataclass(frozen=True)
class SearchSettings:
    """Every knob of a schedule search (``optimal_schedules``), validated at construction (a ValueError or
    TypeError naming the field); frozen, so one object describes one search (``dataclasses.replace`` for
    another). The Python API, ``boss-fast schedule`` and the demo build one.

    Attributes:
        grid: an int n for ``uniform_grid(n)`` (default 100) or the grid times (N,) in [0, 1], stored as a
            tuple of floats; at most :data:`MAX_GRID` = 100,000 steps (the (N, N) float64 sums: 74.5 GiB).
        num_samples: the noises (reference: 100), or "auto": rounds of 32, 64, ... noises, capped by
            ``max_samples`` (None: 1024; only with "auto"), until the global objective's held-out test holds
            (:func:`_auto_global`: rounds j - 2 and j - 1 within 2% on round j's new noises) or, for the local
            objective, no knot of any budget moves by more than 2 grid points (:func:`auto_rounds`). Measured
            not to save evaluations on the bundled models (docs/results.md, "Cheaper searches").
        batch_size: noises per teacher batch (and the global objective's rows per model call), >= 1.
        seed: of the noise (``seeded_noise``: sample m depends only on (seed, m)), >= 0.
        objective: "global" (default: the DP over the sampler's own states, the error at t = 1,
            ``boss_fast.global_objective``) or "local" (BOSS: the sum of one-step errors from the teacher's
            states, ``boss_fast.cost`` + ``boss_fast.bellman``).
        solver: the teacher, "euler", "heun", "rk4" or "dopri5" (mode None only); None: "heun" for the
            global objective (its targets; the most accurate fixed-step teacher within 12x the local
            search's evaluations at K = 10), "euler" for the local one (BOSS's reference).
        metric: "l2sq" (BOSS) or "l2" (GITS).
        discount: the local DP's weight ``discount**m`` on its m-th step (``boss_fast.bellman``): 1.0 is BOSS;
            > 1 weights later steps (toward the data) more, as GITS's coefficient 1.15 does; < 1 the early
            ones (the global objective: 1.0).
        dp: the global DP, "full" (every source) or "coarse" (``boss_fast.refine``: 0.33-0.35x the
            full DP's evaluations); None: "coarse" for the global objective (:data:`DEFAULT_DP`, with the
            default polish: held-out RMSE no worse than the full DP's at any K on the bundled models,
            docs/results.md), "full" for the local one (:attr:`dp_route`).
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
            t_s is ``(1 - t_s) * noise``, as ComfyUI's flow models); None: the objective's
            ``DEFAULT_START``, "noise" for the global objective (the default search; docs/results.md says why)
            and "zero" for the local one (so ``objective="local"`` alone is BOSS as published)
            (:attr:`start_rule`). The schedules carry the rule (``Schedule.start``).
        start_cap: the last grid point a free start may take (None: every point below the last); only with
            a free start. The global objective's full DP evaluates ``start_cap + 1`` start states per noise
            where the pinned start evaluates 1 (``global_objective.start_extra_evaluations``).
        autocast: None (the model in the search's dtype), ``torch.bfloat16`` or ``torch.float16``: every
            model call of the search (teacher and DP) runs under ``torch.autocast`` in that dtype, its output
            cast back; the states stay float32 (the search's dtype: float16/bfloat16 states and float64 ones,
            which autocast leaves alone, are refused), the errors float64, the DP float64; not with solver
            "dopri5", whose step control would chase the model's rounding. Recorded in the checkpoint
            header: a run in one precision does not resume another's.
        polish: after the global DP, move knots of every budget's schedule by a ladder of 4, 2 and 1 grid
            points while the mean endpoint error on the search noises falls (``boss_fast.polish``: probed on
            half the noises but at least 128, a move kept only where it is also lower on all of them):
            "start" (the start knot; a free start only), "all" (every knot) or "none"; None: "start" for the
            global objective with a free start (the DP is greedy in the past and its start knots come out
            early: digits K = 4 held-out RMSE 0.1375 -> 0.1070, docs/results.md), "none" otherwise (the
            local objective takes "none" only). Costs at most ``polish.polish_rows`` evaluations per budget
            (229 per noise for every K <= 10 with 256 noises, fixed by the ladder but for the probes a knot's
            range cuts off and the checks of budgets that did not move).

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
    dp: str | None = None
    store: str = "device"
    store_dir: str | os.PathLike | None = None
    mode: str | None = None
    backend: str = "auto"
    start: str | None = None
    start_cap: int | None = None
    autocast: torch.dtype | None = None
    polish: str | None = None

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
        if self.dp is not None:
            check_choice(self.dp, DPS, "dp")
        check_choice(self.store, STORES, "store")
        check_store_dir(self.store_dir, self.store)
        check_choice(self.backend, ("auto", *DP_BACKENDS), "backend")
        if self.start is not None:
            check_choice(self.start, START_RULES, "start")
        _check_start_cap(self)
        _check_polish(self)
        _check_objective_knobs(self)
        check_autocast(self.autocast, "autocast")
        if self.autocast is not None and self.teacher == "dopri5":
            raise ValueError(
                f"autocast={self.autocast} with solver='dopri5': the adaptive teacher's error control would "
                "chase the reduced-precision model's rounding; use a fixed-step solver ('euler', 'heun', "
                "'rk4') or autocast=None"
            )

    @property
    def start_rule(self) -> str:
        """The start rule this search runs: ``start``, or the objective's ``DEFAULT_START``."""
        return DEFAULT_START[self.objective] if self.start is None else self.start

    @property
    def dp_route(self) -> str:
        """The global DP this search runs: ``dp``, or "coarse" (the default since it was measured with the
        polish: docs/results.md); "full" for the local objective, which has no route to choose."""
        if self.dp is not None:
            return self.dp
        return DEFAULT_DP if self.objective == "global" else "full"

    @property
    def polish_knots(self) -> str:
        """The polish this search runs: ``polish``, or "start" for a global search with a free start and
        "none" otherwise."""
        if self.polish is not None:
            return self.polish
        return "start" if self.objective == "global" and self.start_rule != "zero" else "none"

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
            # Always written: a reader ignores keys it does not ask for, so a float32 run must ask for this
            # one to refuse a bfloat16 run's file.
            "autocast": str(self.settings.autocast),
        }


def _states_dtype(
    autocast: torch.dtype, asked: torch.dtype | None, default: torch.dtype, holds_float64: bool
) -> torch.dtype:
    """The states' dtype of a search whose model runs under autocast: float32 (``asked``, or ``default`` when
    it is below float32). Refused by name: states below float32 (the point is to keep them there) and
    float64 ones (``torch.autocast`` leaves float64 tensors alone: the model would not run in autocast)."""
    dtype = default if asked is None else asked
    if dtype == torch.float64 or holds_float64:
        where = "dtype=torch.float64" if asked == torch.float64 else "the model holds float64 tensors"
        raise ValueError(
            f"autocast={autocast} needs float32 states: torch.autocast leaves float64 tensors in float64, so "
            f"the model would not run in {autocast} ({where}); give a float32 model and dtype=torch.float32"
        )
    if asked is not None and asked.itemsize < 4:
        raise ValueError(
            f"autocast={autocast} runs the model in reduced precision and keeps the states in dtype; "
            f"dtype={asked} would put the states there too: give dtype torch.float32"
        )
    return torch.float32


def _holds_float64(velocity: VelocityFn) -> bool:
    """Whether an ``nn.Module`` velocity has a float64 parameter or buffer (it then computes in float64,
    which autocast leaves alone); a plain callable cannot be inspected (False)."""
    if not isinstance(velocity, torch.nn.Module):
        return False
    return any(p.dtype == torch.float64 for p in (*velocity.parameters(), *velocity.buffers()))


class _Autocast:
    """``velocity(x, t)`` called under ``torch.autocast(x's device type, dtype)``, its output cast back to x's
    dtype (the states and errors stay in it). No weight cache: the same object serves CUDA graph capture."""

    def __init__(self, velocity: VelocityFn, dtype: torch.dtype) -> None:
        self.velocity, self.dtype = velocity, dtype

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype, cache_enabled=False):
            v = self.velocity(x, t)
        return v.to(x.dtype) if isinstance(v, torch.Tensor) else v


class _BankedAutocast(_Autocast):
    """``_Autocast`` of a velocity with a bank of conditionings (``boss_fast.ode.for_rows``)."""

    def for_rows(self, rows: torch.Tensor) -> VelocityFn:
        return _Autocast(for_rows(self.velocity, rows), self.dtype)


def _model_calls(velocity: VelocityFn, autocast: torch.dtype | None) -> VelocityFn:
    """The velocity the search calls: ``velocity`` itself, or under autocast (a bank stays a bank)."""
    if autocast is None:
        return velocity
    return (_BankedAutocast if hasattr(velocity, "for_rows") else _Autocast)(velocity, autocast)


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
    if settings.autocast is not None:
        dtype = _states_dtype(settings.autocast, run.dtype, dtype, _holds_float64(velocity))
    fingerprint = model_fingerprint(velocity) if isinstance(velocity, torch.nn.Module) else None
    model = checkpoint_model_key(velocity, run.checkpoint, run.checkpoint_key)
    search = _Search(settings, times, shape, settings.num_samples, device, dtype, fingerprint, model)
    return search, max_steps


def _local_cost(velocity: VelocityFn, search: _Search, run: _Run) -> tuple[np.ndarray, np.ndarray | None]:
    """The local objective's cost matrix over the search's seeded noises, and a free start's costs (+inf
    beyond ``start_cap``; None when the start is pinned)."""
    s = search.settings
    cost, start_costs = _accumulate_cost(
        TeacherRunner(velocity, search.times, s.teacher, s.mode),
        search.batch,
        search.num_samples,
        batch_size=s.batch_size,
        metric=s.metric,
        device=search.device,
        progress=run.progress,
        checkpoint=run.checkpoint,
        identity=search.identity(),
        start_rule=s.start_rule,
    )
    if start_costs is not None:
        start_costs[start_sources(s.start_rule, len(search.times), s.start_cap)[-1] + 1 :] = np.inf
    return cost, start_costs


def _global_pass(s: SearchSettings) -> GlobalPass:
    """How the global objective's passes run, from the search's settings."""
    return GlobalPass(batch_size=s.batch_size, solver=s.teacher, metric=s.metric, mode=s.mode, store=s.store,
                      store_dir=s.store_dir, start=s.start_rule, start_cap=s.start_cap)  # fmt: skip


def _global_schedules(
    velocity: VelocityFn, search: _Search, max_steps: int, run: _Run, keep: bool = False
) -> tuple[ScheduleSet, GlobalTable]:
    """The global objective's ``ScheduleSet`` (``settings.dp``: "full", every source, or "coarse",
    ``boss_fast.refine``; then ``settings.polish``) and its DP table (with the teacher's endpoints when
    polished or ``keep``)."""
    s = search.settings
    passes = _global_pass(s)
    args = (velocity, search.batch, search.num_samples, search.times, max_steps, passes)
    # "dp" in every header: a checkpoint reader checks the keys this run asks for, so each route names itself
    handles = {"device": search.device, "progress": run.progress, "checkpoint": run.checkpoint,
               "identity": {**search.identity(), "dp": s.dp_route}}  # fmt: skip
    keep = keep or s.polish_knots != "none"
    if s.dp_route == "coarse":
        table = coarse_to_fine_table(*args, plan=CoarseToFine(), keep_endpoints=keep, **handles)
    else:
        table = accumulate_global(*args, keep_endpoints=keep, **handles)
    paths = global_paths(table)
    if s.polish_knots != "none":
        polished = polish_paths(velocity, search.batch, table, passes, s.polish_knots, **handles)
        paths = [path for path, _ in polished]
    found = ScheduleSet(
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
        for path in paths
    )
    return found, table


def _search(velocity: VelocityFn, shape: Sequence[int], max_steps: int, settings: SearchSettings, run: _Run):
    """One search with a fixed number of noises: every budget 1 .. ``max_steps``."""
    search, max_steps = _validate_search(velocity, shape, max_steps, settings, run)
    velocity = _model_calls(velocity, settings.autocast)
    if settings.objective == "global":
        _check_store_fits(search, max_steps, run)
        return _global_schedules(velocity, search, max_steps, run)[0]
    cost, start_costs = _local_cost(velocity, search, run)
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
        start_costs=start_costs,
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

    With ``dp="full"`` (and the local objective) one budget is the same call read at K:
    ``optimal_schedules(velocity, shape, K)[K]``; every budget up to K costs what K alone does (the global
    DP's levels and the local Bellman table do not depend on the largest budget asked for), and ``result[k]``
    does not depend on ``max_steps``. The default coarse route restricts each fine level to windows around the
    knots of every budget searched, so there ``result[k]`` can depend on ``max_steps`` (its cost's last
    digits did in the tests: the windows change the error kernel's summation order); the polish of budget k
    depends on budget k's path only. A local set keeps its cost matrix, so ``resample(K)`` for K > max_steps
    re-solves it exactly; a global set interpolates (``ScheduleSet``).

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
    if settings.objective == "global":
        return _auto_global(velocity, shape, max_steps, settings, run, cap)
    return auto_rounds(lambda n: _search(velocity, shape, max_steps, _with_samples(settings, n), run), cap)


def _with_samples(settings: SearchSettings, n: int) -> SearchSettings:
    """``settings`` with a fixed number of noises (one round of "auto")."""
    return replace(settings, num_samples=n, max_samples=None)


def _moved(a: ScheduleSet, b: ScheduleSet) -> int:
    """The largest move of any knot of any budget between two sets of the same budgets, in grid points."""
    return max(int(np.abs(a[k].indices - b[k].indices).max()) for k in a)


Settled = Callable[[ScheduleSet, ScheduleSet, int], bool]


def _knots_settled(previous: ScheduleSet, found: ScheduleSet, seen: int) -> bool:
    """The local objective's rule: no knot of any budget moved by more than ``AUTO_TOLERANCE`` grid points."""
    return _moved(previous, found) <= AUTO_TOLERANCE


def auto_rounds(
    search: Callable[[int], ScheduleSet], cap: int, settled: Settled | None = None
) -> ScheduleSet:
    """``num_samples="auto"``'s rounds over ``search(n)`` (the schedules from the first n noises).

    Rounds of 32, 64, 128, ... noises (noise m is the same in every round; the last round ``cap``); stops
    after the first round for which ``settled(previous round's set, this round's set, previous round's n)``
    holds (default: no knot of any budget moved by more than two grid points, the local objective's rule;
    the global objective's is :func:`_auto_global`'s held-out test) and returns that round's schedules,
    whose ``num_samples`` is the number it used (a ``UserWarning`` when the cap stops it first). Every round
    is a whole search: the evaluations are the rounds' sum, about twice the last round's. Deterministic for
    a seed.

    Example:
        >>> found = auto_rounds(lambda n: optimal_schedules(lambda x, t: -x, (2,), 2,
        ...     SearchSettings(grid=10, num_samples=n)), 1024)
        >>> found[2].num_samples  # 32 and 64 noises agree on this flow
        64
    """
    settled = _knots_settled if settled is None else settled
    n, previous, seen = min(AUTO_START, cap), None, 0
    while True:
        found = search(n)
        if previous is not None and settled(previous, found, seen):
            return found
        if n >= cap:
            warnings.warn(
                f"num_samples='auto' reached max_samples={cap} before the schedules settled (the last two "
                "rounds still differed by the rule of docs/api.md: held-out error for the global objective, "
                f"knot moves over {AUTO_TOLERANCE} grid points for the local one)",
                UserWarning,
                stacklevel=3,
            )
            return found
        previous, seen, n = found, n, min(2 * n, cap)


def _auto_global(
    velocity: VelocityFn, shape: Sequence[int], max_steps: int, settings: SearchSettings, run: _Run, cap: int
) -> ScheduleSet:
    """The global objective's "auto": each round's search keeps its teacher's endpoints; after round j, the
    schedules of rounds j - 2 and j - 1 are compared on the noises only round j used (neither of them saw
    those noises, and their teacher endpoints come with round j's DP: no new teacher run), and the rounds stop
    when round j - 2's are as good as round j - 1's (:func:`_held_out_settled`), returning round j's. A
    round's own new noises would not do: its schedules, polished on them, win there by fitting (a first
    version of the rule that compared rounds j - 1 and j on round j's new noises ran every bundled model to
    the cap: benchmarks/results/auto_samples_heldout_per_k.md)."""
    last: dict[str, object] = {"history": []}

    def one(n: int) -> ScheduleSet:
        search, steps = _validate_search(velocity, shape, max_steps, _with_samples(settings, n), run)
        calls = _model_calls(velocity, settings.autocast)
        _check_store_fits(search, steps, run)
        found, table = _global_schedules(calls, search, steps, run, keep=True)
        last.update(velocity=calls, search=search, table=table)
        last["history"].append(found)
        return found

    def settled(previous: ScheduleSet, found: ScheduleSet, seen: int) -> bool:
        history = last["history"]
        if len(history) < 3:
            return False
        return _held_out_settled(last["velocity"], last["search"], last["table"], history[-3], previous, seen)

    return auto_rounds(one, cap, settled)


def _held_out_settled(velocity: VelocityFn, search: _Search, table: GlobalTable, previous: ScheduleSet,
                      found: ScheduleSet, seen: int) -> bool:  # fmt: skip
    """Whether more noises stopped mattering: on the noises ``seen`` .. M - 1 of ``search`` (which neither
    set was fitted on; their teacher endpoints come with ``table``), the 95% paired-bootstrap interval of the
    geometric mean over the budgets of RMSE(previous) / RMSE(found) lies below 1 + ``AUTO_MARGIN``. One test
    over all budgets: per budget, tens of held-out noises whose errors are dominated by a few leave intervals
    too wide to settle. K evaluations per held-out noise and differing budget, for each of the two sets."""
    s = search.settings
    probe = EndpointProbe.of_table(velocity, search.batch, table, _global_pass(s), search.device)
    weights = bootstrap_weights(search.num_samples - seen, AUTO_RESAMPLES, seed=s.seed)
    logs = np.zeros(AUTO_RESAMPLES + 1)  # sum over budgets of log RMSE(previous) / RMSE(this round)
    for k in found:
        if np.array_equal(previous[k].indices, found[k].indices):
            continue  # the same schedule: a ratio of 1
        old, new = (bootstrap_statistics(probe.per_noise(sset[k].times, seen, search.num_samples),
                                         rmse_statistic, weights) for sset in (previous, found))  # fmt: skip
        logs += np.log(np.maximum(old, 1e-300) / np.maximum(new, 1e-300))
    mean = logs / len(found)
    high = paired_difference(mean, np.zeros_like(mean)).high
    return bool(high <= np.log1p(AUTO_MARGIN))


# ------------------------------------------------------------------------------- the bill before the work


@dataclass(frozen=True)
class SearchMemory:
    """Bytes of a search's per-sample rows by where they live (the law of docs/search_memory.md, without its
    constant: one model call's activations and the pairwise kernel's tiles)."""

    device: int
    host: int
    disk: int


def search_memory(
    objective: str,
    store: str,
    grid_points: int,
    num_samples: int,
    batch_size: int,
    values: int,
    itemsize: int,
) -> SearchMemory:
    """The memory law of the schedule search: the one home of docs/search_memory.md's table.

    Args:
        objective, store: as ``SearchSettings``.
        grid_points: N (``grid=100`` is 101). num_samples: M_r, this rank's noises. batch_size: the
            setting (B = min(batch_size, M_r) noises in flight). values: D per sample. itemsize: s bytes.

    Returns:
        device, host and disk bytes: global "device": (3N - 1) M_r D s + N B D s on the device; "host" and
        "disk": 3 N B D s on the device and (3N - 1) M_r D s in host memory or in a file; local (any store):
        2 N B D s (one batch's teacher states and slopes).

    Example:
        >>> mem = search_memory("global", "disk", 101, 64, 8, 16 * 128 * 128, 4)  # SD3-1024, 64 noises
        >>> round(mem.device / 2**30, 1), round(mem.disk / 2**30, 1), mem.host
        (2.4, 18.9, 0)
    """
    n, m, d, s = grid_points, num_samples, values, itemsize
    b = min(batch_size, m)
    if objective == "local":
        return SearchMemory(2 * n * b * d * s, 0, 0)
    rows = (3 * n - 1) * m * d * s
    if store == "device":
        return SearchMemory(rows + n * b * d * s, 0, 0)
    work = 3 * n * b * d * s
    return SearchMemory(work, rows, 0) if store == "host" else SearchMemory(work, 0, rows)


@dataclass(frozen=True)
class _Pass:
    """One pass over noise batches, as counted: noises, grid points, teacher evaluations per noise (None:
    adaptive) and the DP's sources per level (model evaluations per noise of each level)."""

    samples: int
    points: int
    teacher: int | None
    levels: tuple[int, ...]
    # The polish (``polish.polish_rows``): at most ``whole`` evaluations on every noise (the budgets probed on
    # all of them), ``polish`` on each of the first ``probed`` noises (in calls of their batches' rows), then
    # ``check`` on each of the rest (calls of the rest's part of each batch).
    whole: int = 0
    polish: int = 0
    probed: int = 0
    check: int = 0

    def evaluations(self) -> int:
        """Model evaluations of the pass over every rank (the polish's at most)."""
        dp = self.samples * ((self.teacher or 0) + sum(self.levels) + self.whole)
        return dp + self.polish * self.probed + self.check * (self.samples - self.probed)


def _passes(settings: SearchSettings, n: int, max_steps: int, m: int) -> list[_Pass]:
    """The passes of one search of ``m`` noises, every evaluation counted (``dp="coarse"``'s fine levels: at
    most ``window_bound``)."""
    solver = settings.teacher
    if settings.objective == "local":
        teacher = teacher_evaluations(n, solver)
        return [_Pass(m, n, None if teacher is None else teacher, ())]
    starts = 1 + start_extra_evaluations(settings.start_rule, n, settings.start_cap)  # level 1's sources
    pinned = settings.start_rule == "zero"
    polish = _polish_counts(settings.polish_knots, pinned, max_steps, m)
    if settings.dp_route == "full":
        levels = tuple(level_sources(k, n, starts) for k in _levels(max_steps))
        return [_Pass(m, n, teacher_evaluations(n, solver), levels, **polish)]
    plan = CoarseToFine()
    sub = plan.coarse_grid(n)
    nc = len(sub)
    # The coarse pass's starts: the coarse points at or below the fine cap, below the last (refine's rule).
    coarse_starts = 1 if starts == 1 else min(int(np.searchsorted(sub, starts - 1, side="right")), nc - 1)
    coarse = tuple(level_sources(k, nc, coarse_starts) for k in _levels(min(max_steps, nc - 1)))
    fine = tuple(window_bound(k, n, max_steps, plan.radius, starts) for k in _levels(max_steps))
    return [
        _Pass(plan.coarse_samples(m), nc, teacher_evaluations(nc, solver), coarse),
        _Pass(m, n, teacher_evaluations(n, solver, plan.teacher_stride), fine, **polish),
    ]


def _polish_counts(knots: str, pinned: bool, max_steps: int, m: int) -> dict[str, int]:
    """``_Pass``'s polish fields, per budget by ``polish.probed_on`` (the rule ``polish.polish_rows`` counts):
    the budgets probed on every noise, and the others on the first ``polish_samples(m)``, checked on the
    rest."""
    bounds = {k: polish_bound(k, knots, pinned) for k in _levels(max_steps)}
    halves = [k for k, b in bounds.items() if b and probed_on(k, m) < m]
    whole = sum(b for k, b in bounds.items() if k not in halves)
    if not halves:
        return {"whole": whole}
    polish = sum(bounds[k] for k in halves)
    return {"whole": whole, "polish": polish, "probed": polish_samples(m), "check": sum(halves)}


def _levels(max_steps: int) -> range:
    return range(1, max_steps + 1)


def _pass_calls(p: _Pass, width: int, calls: dict[int, int], recorded: bool) -> int:
    """Add this rank's model calls of pass ``p`` to ``calls`` {width: count}: the teacher's, one call per
    evaluation on a whole batch (``recorded``: on a ``TeacherRecorder``, which checks the model once on one
    row when it is built, once per batch shape); each DP level's, its sources x batch rows in calls of
    ``width`` rows; the polish's, one call per evaluation on each batch (the budgets probed on every noise),
    on each batch of the probed noises, and (its check) on each batch's part past them. Returns the
    recorders' checks."""
    shard = Shard.of_this_process(p.samples, width)
    sizes = shard.sizes
    checks = len(set(sizes)) if recorded and p.teacher is not None else 0
    if checks:
        calls[1] = calls.get(1, 0) + checks
    for b in Shard.of_this_process(p.probed, width).sizes if p.polish else ():
        calls[b] = calls.get(b, 0) + p.polish
    for start, stop in map(shard.span, shard.mine if p.check else ()):
        part = stop - max(start, p.probed)
        if part > 0:
            calls[part] = calls.get(part, 0) + p.check
    for b in sizes:
        calls[b] = calls.get(b, 0) + (p.teacher or 0) + p.whole
        for sources in p.levels:
            full, rest = divmod(sources * b, width)
            calls[width] = calls.get(width, 0) + full
            if rest:
                calls[rest] = calls.get(rest, 0) + 1
    return checks


def _rounds(settings: SearchSettings) -> list[int]:
    """The noise counts of the searches one call runs: one, or every round of "auto" up to its cap."""
    if settings.num_samples != "auto":
        return [int(settings.num_samples)]
    cap = AUTO_CAP if settings.max_samples is None else settings.max_samples
    rounds = [min(AUTO_START, cap)]
    while rounds[-1] < cap:
        rounds.append(min(2 * rounds[-1], cap))
    return rounds


# What the bill adds on the device beside the law: the pairwise error kernel's float64 tiles in flight
# (boss_fast.cost: about 4 tiles of 8 MiB, docs/search_memory.md's constant).
KERNEL_BYTES = 32 << 20


def _host_available() -> int | None:
    """Host memory available now (``MemAvailable`` of /proc/meminfo, else the free pages), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not POSIX
        return None


def _free(device: torch.device, folder: str) -> tuple[int | None, int | None, int | None]:
    """(device, host, disk) bytes free now: ``torch.cuda.mem_get_info`` on CUDA (on CPU the device is the
    host: its available memory), and the free space of ``folder``'s file system."""
    host = _host_available()
    dev = int(torch.cuda.mem_get_info(device)[0]) if device.type == "cuda" else host
    try:
        disk = shutil.disk_usage(_nearest_folder(folder)).free
    except OSError:
        disk = None
    return dev, host, disk


def _nearest_folder(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _shortfall(mem: SearchMemory, free: tuple[int | None, ...], cuda: bool) -> tuple[str, int, int] | None:
    """(what, needed, free) of the first memory ``mem`` does not fit in, or None when it fits. Off CUDA the
    device and host rows share the host's memory."""
    dev, host, disk = free
    needs = [("device memory", mem.device, dev), ("host memory", mem.host, host)] if cuda else [
        ("memory", mem.device + mem.host, host)]  # fmt: skip
    for what, need, have in [*needs, ("disk space", mem.disk, disk)]:
        if have is not None and need > have:
            return what, need, have
    return None


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


def _size(nbytes: float) -> str:
    """MiB below 1 GiB, else GiB (the bill's lines)."""
    return f"{nbytes / 2**20:.1f} MiB" if nbytes < 2**30 else _gib(nbytes)


def _refusal(memories: dict[str, SearchMemory], store: str, free: tuple, device: torch.device) -> str | None:
    """Why the search's ``store`` does not fit (naming what it needs, what is free and a store that fits), or
    None when it fits."""
    cuda = device.type == "cuda"
    short = _shortfall(memories[store], free, cuda)
    if short is None:
        return None
    what, need, have = short
    text = (f"store={store!r} needs {_gib(need)} of {what} on {device} by the memory law "
            f"(docs/search_memory.md), more than the {_gib(have)} free")  # fmt: skip
    for other in ("host", "disk"):
        if other != store and _shortfall(memories[other], free, cuda) is None:
            mem = memories[other]
            return (f"{text}; store={other!r} fits ({_gib(mem.device)} on the device, {_gib(mem.host)} of "
                    f"host memory, {_gib(mem.disk)} on disk)")  # fmt: skip
    return f"{text}; no store fits: lower num_samples or batch_size"


def _store_folder(settings: SearchSettings, checkpoint: str | os.PathLike | None) -> str:
    """Where store="disk" writes (``accumulate_global``'s rule): store_dir, the checkpoint's folder, tmp."""
    if settings.store_dir is not None:
        return os.fspath(settings.store_dir)
    if checkpoint is not None:
        return os.path.dirname(os.path.abspath(checkpoint))
    return tempfile.gettempdir()


def _memories(
    settings: SearchSettings, passes: list[_Pass], values: int, itemsize: int
) -> dict[str, SearchMemory]:
    """The law's bytes of each store for ``passes`` (run one after another: the largest of each part)."""
    out = {}
    for store in STORES:
        per = []
        for p in passes:
            mine = sum(Shard.of_this_process(p.samples, settings.batch_size).sizes)
            per.append(search_memory(settings.objective, store, p.points, mine, settings.batch_size, values,
                                     itemsize))  # fmt: skip
        out[store] = SearchMemory(*(max(getattr(m, f) for m in per) for f in ("device", "host", "disk")))
    return out


def _check_store_fits(search: _Search, max_steps: int, run: _Run) -> None:
    """Refuse (ValueError), before any model call, a global search whose store does not fit what is free."""
    s = search.settings
    passes = _passes(s, len(search.times), max_steps, search.num_samples)
    values = int(np.prod(search.shape, dtype=np.int64))
    memories = _memories(s, passes, values, search.dtype.itemsize)
    free = _free(search.device, _store_folder(s, run.checkpoint))
    refusal = _refusal(memories, s.store, free, search.device)
    if refusal is not None:
        raise ValueError(refusal)


@dataclass(frozen=True)
class SearchBill:
    """What a schedule search will cost, known before it runs (:func:`search_bill`).

    Attributes:
        evaluations: model evaluations (rows) of the whole search, every rank and every round; None with the
            adaptive "dopri5" teacher (known only after the run).
        num_samples: noises of the largest search (the cap for num_samples="auto").
        exact: False where ``evaluations`` is an upper bound: dp="coarse" (its windows may overlap) and
            num_samples="auto" (every round up to the cap; it may stop earlier).
        calls: this rank's model calls as ((rows per call, count), ...), widest first.
        memory: the law's bytes (device, host, disk) of the chosen store (``search_memory``).
        work: bytes on the device beside the law: the kernel's tiles (``KERNEL_BYTES``), plus the timed
            call's activations where they are measured (CUDA: ``torch.cuda.max_memory_allocated``).
        free: (device, host, disk) bytes free when the bill was made (None: unknown).
        refusal: why the search would be refused before it starts (its store does not fit), or None.
        call_seconds: one model call of ``batch_size`` rows: the median of ``TIMED_CALLS`` timed calls
            after ``WARM_UP_CALLS`` warm-up calls.
        seconds: the projected wall time of the model calls, sum over calls of call_seconds x rows /
            batch_size; None without a count.

    Example:
        >>> full = SearchSettings(grid=10, num_samples=4, dp="full", polish="none")  # counted exactly
        >>> bill = search_bill(lambda x, t: -x, (2,), 2, full)
        >>> bill.lines()[0]  # per noise: Heun's 2 x 10 calls, the DP's 10 free starts + 9 sources
        'model evaluations: 156 in all, 39.0 per noise (4 noises)'
    """

    evaluations: int | None
    num_samples: int
    exact: bool
    calls: tuple[tuple[int, int], ...]
    memory: SearchMemory
    work: int
    free: tuple[int | None, int | None, int | None]
    refusal: str | None
    call_seconds: float
    seconds: float | None
    store: str
    device: str
    batch_size: int

    @property
    def per_noise(self) -> float | None:
        """Model evaluations per noise (of the largest search)."""
        return None if self.evaluations is None else self.evaluations / self.num_samples

    def lines(self) -> list[str]:
        """The bill as text, one item a line (what ``boss-fast schedule --dry-run`` prints)."""
        bound = "" if self.exact else "at most "
        if self.evaluations is None:
            evals = "unknown (the dopri5 teacher is adaptive)"
        else:
            evals = f"{bound}{self.evaluations:,} in all, {self.per_noise:,.1f} per noise"
            evals += f" ({self.num_samples} noises)"
        calls = ", ".join(f"{n:,} x {w} rows" for w, n in self.calls)
        mem = self.memory
        needs = (mem.device + self.work, mem.host, mem.disk)
        parts = zip(("search device", "host", "disk"), needs, self.free, strict=True)
        out = [f"model evaluations: {evals}", f"model calls (this rank): {calls or 'none counted'}"]
        for name, need, have in parts:
            avail = "" if have is None else f" ({_size(have)} free)"
            out.append(f"memory, {name}: {_size(need)}{avail}")
        out[-3] += f" (store {self.store!r} on {self.device}, {_size(self.work)} of it beside the law's rows)"
        out.append(
            f"one model call of {self.batch_size} rows: {self.call_seconds:.4g} s (median of {TIMED_CALLS})"
        )
        projected = (
            "unknown"
            if self.seconds is None
            else f"{bound}{self.seconds:,.1f} s ({self.seconds / 3600:.2f} h)"
        )
        out.append(f"projected wall time: {projected}")
        if self.refusal is not None:
            out.append(f"refused: {self.refusal}")
        return out


# Calls timed after the warm-up calls; the bill takes their median. One call alone swung 2x between runs on
# the shared 2-core machine, and three after one warm-up 1.8x between fresh processes
# (benchmarks/results/search_bill.md); seven cost little beside the search's hundreds.
WARM_UP_CALLS = 2
TIMED_CALLS = 5


def _timed_call(velocity: VelocityFn, search: _Search) -> tuple[float, int | None]:
    """(seconds, activation bytes or None) of one model call of ``batch_size`` rows on the search's device
    and dtype: the median of ``TIMED_CALLS`` calls after ``WARM_UP_CALLS`` warm-up calls, each synchronised
    on CUDA, where the calls' peak allocation is measured."""
    width, dev = search.settings.batch_size, search.device
    x = seeded_noise(search.shape, 0, width, seed=search.settings.seed, dtype=search.dtype).to(dev)
    t = torch.full((width,), 0.5, dtype=search.dtype, device=dev)
    call = for_rows(velocity, torch.arange(width, device=dev))
    cuda = dev.type == "cuda"
    times = []
    with torch.no_grad():
        for _ in range(WARM_UP_CALLS):  # lazy initialisation, allocator, kernels' first launch, thread pools
            call(x, t)
        if cuda:
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
        for _ in range(TIMED_CALLS):
            start = time.perf_counter()
            call(x, t)
            if cuda:
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - start)
    peak = int(torch.cuda.max_memory_allocated(dev) - base) if cuda else None
    return float(np.median(times)), peak


def _count(
    settings: SearchSettings, n: int, max_steps: int
) -> tuple[int | None, dict[int, int], list[_Pass]]:
    """(evaluations in all, this rank's calls {width: count}, the largest search's passes) over the rounds."""
    evaluations: int | None = 0
    calls: dict[int, int] = {}
    passes: list[_Pass] = []
    for m in _rounds(settings):
        passes = _passes(settings, n, max_steps, m)
        for p in passes:
            checks = _pass_calls(p, settings.batch_size, calls, settings.mode is not None)
            if p.teacher is None or evaluations is None:
                evaluations = None
            else:  # one process: this rank's recorder checks are every rank's
                evaluations += p.evaluations() + checks
    return evaluations, calls, passes


def _exact(settings: SearchSettings) -> bool:
    """Whether the count is exact: not for dp="coarse" (windows), a polish (its moves depend on the model),
    num_samples="auto" (rounds) and the modes that warm up or capture before they run ("compile",
    "cuda_graph", "auto": calls not counted)."""
    fixed = settings.dp_route == "full" and settings.polish_knots == "none"
    return fixed and settings.num_samples != "auto" and settings.mode in (None, "eager")


def search_bill(
    velocity: VelocityFn,
    shape: Sequence[int],
    max_steps: int,
    settings: SearchSettings | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> SearchBill:
    """What ``optimal_schedules(velocity, shape, max_steps, settings, device=, dtype=)`` will cost, before it
    runs: its model evaluations (counted in closed form from the grid, the budgets, the teacher and the DP
    route), its memory by the law (``search_memory``) against what is free now, and its wall time projected
    from the time of one model call of ``batch_size`` rows (the median of ``TIMED_CALLS`` calls after
    ``WARM_UP_CALLS`` warm-up calls: the only model calls made here).

    The time law: T = sum over the search's calls of t x rows / batch_size, t the timed call; the DP's own
    arithmetic (an O(N^2) argmin per level) and the teacher's Euler updates are left out
    (benchmarks/results/search_bill.md measures how far that is off). ``checkpoint`` only says where the
    disk store would write. Arguments as ``optimal_schedules``.

    Example:
        >>> full = SearchSettings(num_samples=8, batch_size=8, dp="full", polish="none")  # counted exactly
        >>> bill = search_bill(lambda x, t: -x, (2,), 10, full)
        >>> bill.evaluations, bill.per_noise  # Heun teacher 200 + the DP's 856 + 99 free starts, K <= 10
        (9240, 1155.0)
    """
    settings = SearchSettings() if settings is None else settings
    if not isinstance(settings, SearchSettings):
        raise TypeError(f"settings must be a SearchSettings, got {type(settings).__name__}")
    largest = _rounds(settings)[-1]
    run = _Run(device, dtype, False, checkpoint, None if checkpoint is None else "bill")
    search, max_steps = _validate_search(velocity, shape, max_steps, replace(settings, num_samples=largest,
                                         max_samples=None), run)  # fmt: skip
    evaluations, calls, passes = _count(settings, len(search.times), max_steps)
    memories = _memories(settings, passes, int(np.prod(search.shape, dtype=np.int64)), search.dtype.itemsize)
    free = _free(search.device, _store_folder(settings, checkpoint))
    seconds, activations = _timed_call(_model_calls(velocity, settings.autocast), search)
    rows = sum(w * n for w, n in calls.items())
    global_search = settings.objective == "global"
    return SearchBill(
        evaluations=evaluations,
        num_samples=largest,
        exact=_exact(settings),
        calls=tuple(sorted(calls.items(), reverse=True)),
        memory=memories[settings.store],
        work=KERNEL_BYTES + (activations or 0),
        free=free,
        refusal=_refusal(memories, settings.store, free, search.device) if global_search else None,
        call_seconds=seconds,
        seconds=None if evaluations is None else seconds * rows / settings.batch_size,
        store=settings.store if global_search else "(local: one batch)",
        device=str(search.device),
        batch_size=settings.batch_size,
    )
