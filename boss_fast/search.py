"""The search for a schedule from a velocity model (BOSS stage 1 end to end): stream noise batches through the
teacher, reduce the cost matrix, solve the DP.

``cost_matrix`` runs the teacher (:class:`boss_fast.trajectories.TeacherRunner`) batch after batch and adds
the per-batch (sum, count) of :func:`boss_fast.cost.trajectory_cost_sums`; memory is one batch's trajectory.
Around that pure loop: a checkpoint rewritten atomically after every batch (resume is bit-identical), and
torch.distributed (rank r of W runs batches r, r + W, ...; the float64 (sum, count) are all-reduced).
``optimal_schedule`` draws seeded noise, runs the same loop and returns the DP's ``Schedule``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from boss_fast._checkpoint import noise_identity
from boss_fast._identity import checkpoint_model_key, model_fingerprint
from boss_fast._runtime import module_placement
from boss_fast._validation import (
    METRICS,
    as_times,
    check_choice,
    check_dtype,
    check_float,
    check_int,
    check_noise,
    check_teacher,
)
from boss_fast.cost import trajectory_cost_sums
from boss_fast.engine import STORES, Checkpoint, Shard, progress_bar
from boss_fast.grids import resolve_grid
from boss_fast.ode import VelocityFn
from boss_fast.own_state import accumulate_own_state, own_state_paths
from boss_fast.refine import DPS, CoarseToFine, coarse_to_fine_table
from boss_fast.schedule import OBJECTIVES, Schedule, ScheduleSet, schedules_from_cost
from boss_fast.trajectories import TeacherRunner, seeded_noise

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "cost_matrix", "optimal_schedule", "optimal_schedules"]

DEFAULT_OBJECTIVE = "global"
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
    sums = stored["sums"]
    if sums.shape != (n, n) or sums.dtype != np.float64:
        raise ValueError(f"cost checkpoint {ckpt.path} holds sums of shape {sums.shape}, dtype {sums.dtype}")
    sums, count, done = sums.copy(), int(stored["count"]), int(stored["batches_done"])
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
    times: Sequence[float] | np.ndarray | torch.Tensor,
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

    Runs the teacher (``teacher_trajectory``) on ``times`` for batches of ``batch_size`` noises and reduces
    per-batch sums (``trajectory_cost_sums``): memory is one batch's trajectory whatever the number of
    samples. The result depends on the batching only through float64 summation order.

    Args:
        velocity: ``velocity(x, t)`` (t = 0 noise, t = 1 data), already on ``device``.
        noise: (M, ...) floating tensor, the M teacher start points (reference: M = 100 Gaussian noises).
        times: (N,) strictly increasing grid in [0, 1] (e.g. ``uniform_grid(100)``).
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
    t = as_times(times)
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


@dataclass(frozen=True)
class _Search:
    """Validated arguments of a search from a velocity model (shared by both objectives)."""

    times: np.ndarray
    shape: tuple[int, ...]
    num_samples: int
    batch_size: int
    seed: int
    objective: str
    solver: str
    metric: str
    device: torch.device
    dtype: torch.dtype
    fingerprint: str | None
    model: str = ""

    def batch(self, start: int, stop: int) -> torch.Tensor:
        return seeded_noise(self.shape, start, stop, seed=self.seed, dtype=self.dtype)

    def identity(self) -> dict[str, str]:
        return {
            "noise": f"seeded_noise(seed={self.seed})",
            "sample_shape": str(self.shape),
            "dtype": str(self.dtype),
            "model": self.model,
        }


def _validate_search(
    velocity: VelocityFn,
    shape: Sequence[int],
    steps: int,
    steps_name: str,
    grid: int | Sequence[float] | np.ndarray,
    num_samples: int,
    batch_size: int,
    seed: int,
    objective: str,
    solver: str | None,
    metric: str,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    backend: str,
    discount: float,
    mode: str | None,
) -> tuple[_Search, int, float]:
    shape = tuple(check_int(s, "shape entry") for s in shape)
    steps = check_int(steps, steps_name)
    times = resolve_grid(grid)
    if steps >= len(times):
        raise ValueError(
            f"{steps_name} must be < the grid's {len(times)} points (at most {len(times) - 1}), got {steps}"
        )
    num_samples = check_int(num_samples, "num_samples")
    batch_size = check_int(batch_size, "batch_size")
    seed = check_int(seed, "seed", minimum=0)
    objective = check_choice(objective, OBJECTIVES, "objective")
    solver = check_teacher(_DEFAULT_SOLVER[objective] if solver is None else solver, mode)
    metric = check_choice(metric, METRICS, "metric")
    discount = check_float(discount, "discount")
    if objective == "global" and discount != 1.0:
        raise ValueError(
            f"discount weights the local objective's steps; objective='global' takes 1.0, got {discount}"
        )
    if objective == "global" and backend != "auto":
        raise ValueError(
            "backend selects the Bellman DP's kernel of objective='local'; objective='global' runs its own "
            f"DP in numpy, got backend={backend!r}"
        )
    model_device, model_dtype = module_placement(velocity)
    device = torch.device(device) if device is not None else (model_device or torch.device("cpu"))
    dtype = check_dtype(dtype) or model_dtype or torch.get_default_dtype()
    fingerprint = model_fingerprint(velocity) if isinstance(velocity, torch.nn.Module) else None
    search = _Search(
        times, shape, num_samples, batch_size, seed, objective, solver, metric, device, dtype, fingerprint
    )
    return search, steps, discount


def _keyed(search: _Search, velocity: VelocityFn, checkpoint: object, key: str | None) -> _Search:
    """``search`` with the checkpoint header's model identity (``checkpoint_model_key``)."""
    return replace(search, model=checkpoint_model_key(velocity, checkpoint, key))


def _local_cost(
    velocity: VelocityFn,
    search: _Search,
    progress: bool,
    checkpoint: str | os.PathLike | None,
    mode: str | None,
) -> np.ndarray:
    """The local objective's cost matrix over the search's seeded noises."""
    return _accumulate_cost(
        TeacherRunner(velocity, search.times, search.solver, mode),
        search.batch,
        search.num_samples,
        batch_size=search.batch_size,
        metric=search.metric,
        device=search.device,
        progress=progress,
        checkpoint=checkpoint,
        identity=search.identity(),
    )


def _global_schedules(
    velocity: VelocityFn,
    search: _Search,
    max_steps: int,
    progress: bool,
    checkpoint: str | os.PathLike | None,
    mode: str | None,
    rows: tuple[str, str | os.PathLike | None] = ("device", None),
    dp: str = "full",
) -> ScheduleSet:
    """The global objective's ``ScheduleSet``; ``rows``: (store, store_dir) of ``accumulate_own_state``;
    ``dp``: "full" (every source) or "coarse" (``boss_fast.refine``)."""
    engine = {"batch_size": search.batch_size, "solver": search.solver, "metric": search.metric,
              "device": search.device, "progress": progress, "mode": mode, "store": rows[0],
              "store_dir": rows[1]}  # fmt: skip
    args = (velocity, search.batch, search.num_samples, search.times, max_steps)
    # "dp" in every header: a checkpoint reader checks the keys this run asks for, so each route names itself
    identity = {**search.identity(), "dp": dp}
    if dp == "coarse":
        table = coarse_to_fine_table(
            *args, plan=CoarseToFine(), checkpoint=checkpoint, identity=identity, **engine
        )
    else:
        table = accumulate_own_state(*args, checkpoint=checkpoint, identity=identity, **engine)
    return ScheduleSet(
        Schedule(
            times=search.times[path.indices],
            indices=path.indices,
            cost=path.cost,
            grid=search.times,
            metric=search.metric,
            solver=search.solver,
            num_samples=search.num_samples,
            fingerprint=search.fingerprint,
            shape=search.shape,
            objective="global",
        )
        for path in own_state_paths(table)
    )


def optimal_schedule(
    velocity: VelocityFn,
    shape: Sequence[int],
    steps: int,
    grid: int | Sequence[float] | np.ndarray = 100,
    num_samples: int | str = 256,
    batch_size: int = 256,
    seed: int = 0,
    solver: str | None = None,
    metric: str = "l2sq",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    backend: str = "auto",
    *,
    objective: str = DEFAULT_OBJECTIVE,
    discount: float = 1.0,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    mode: str | None = None,
    checkpoint_key: str | None = None,
    store: str = "device",
    store_dir: str | os.PathLike | None = None,
    dp: str = "full",
    max_samples: int | None = None,
) -> Schedule:
    """The optimal ``steps``-step schedule of a velocity model, end to end.

    Draws ``num_samples`` Gaussian noises (``seeded_noise``: sample m depends only on (seed, m), so the draw
    does not depend on ``batch_size``, the device or the number of processes) and runs the teacher on the grid
    in batches. Then, by ``objective``:

    - "global" (default): the DP over the sampler's own states (``boss_fast.own_state``; Pei et al. 2025):
      the schedule whose Euler sampler ends closest to the teacher at t = 1, on average over the noises.
      About ``steps`` x N model evaluations per sample beside the teacher's, in calls of up to
      ``batch_size`` (state, time) rows; memory: see ``store`` and docs/search_memory.md.
    - "local": BOSS as published: the cost matrix of one-step errors from the teacher's states
      (``boss_fast.cost``, memory one batch's trajectory) and the exact Bellman DP (``boss_fast.bellman``).

    ``optimal_schedules`` returns every budget up to K from the same search.

    Args:
        velocity: ``velocity(x, t)``, t = 0 noise, t = 1 data.
        shape: the shape of ONE sample, without the batch dimension, e.g. (3, 32, 32).
        steps: the budget K, 1 <= K <= N - 1 (an int).
        grid: an int n for ``uniform_grid(n)`` or grid times (N,) in [0, 1]. seed: of the noise (>= 0).
        num_samples, batch_size: noises in total and per teacher batch (reference: 100 noises);
            "auto" (capped by ``max_samples``, default 1024): ``boss_fast.search.auto_rounds``.
        solver: teacher solver; None: "heun" for the global objective (its targets; the most accurate
            fixed-step teacher within 12x the local search's evaluations at K = 10), "euler" for the local
            one (BOSS's reference). metric: "l2sq" (BOSS) or "l2" (GITS).
        device, dtype: where and in what dtype the teacher runs; default: the model's first floating
            parameter's device and dtype when it is an ``nn.Module``, else CPU and torch's default dtype.
        backend: the local DP's backend (``boss_fast.bellman``). objective: "global" or "local", see above.
        discount: the local DP's discount on later steps (GITS); 1.0 is BOSS.
        progress, checkpoint, mode: as in ``boss_fast.cost.cost_matrix`` (mode: the teacher on a recording
            ``Sampler``, e.g. "cuda_graph"; the global objective's own wide calls run in the same mode, "auto"
            being cuda_graph on CUDA and eager elsewhere, ``boss_fast.engine.resolve_wide_mode``); the global
            objective checkpoints after every DP level (``boss_fast.own_state``), with the same resume and
            refusal rules.
        checkpoint_key: as in ``cost_matrix`` (required with ``checkpoint`` for a non-module velocity).
        store: where the global objective keeps its per-sample rows (teacher states, current states,
            velocities: about 3 x num_samples x N sample-sized values) between levels: "device" (default,
            all on ``device``), "host" (host memory, pinned for CUDA) or "disk" (memory-mapped files in a
            temporary folder under ``store_dir``, deleted at the end); with "host" and "disk" the device holds
            one batch's rows. The schedule does not depend on it (same bits). The local objective keeps one
            batch's trajectory whatever the store.
        store_dir: the folder of "disk"'s temporary files; default the checkpoint's folder, else the
            system's temporary directory.
        dp: the global DP, "full" (default) or "coarse" (``boss_fast.refine``: 0.35-0.38x the evaluations).

    Returns:
        A ``Schedule`` with ``objective`` set and ``fingerprint`` ``model_fingerprint(velocity)`` (or None).

    Example:
        >>> sched = optimal_schedule(lambda x, t: -x, (2,), 2, grid=10, num_samples=8)
        >>> sched.steps, sched.objective, float(sched.times[0]), float(sched.times[-1])
        (2, 'global', 0.0, 1.0)
    """
    return _schedules(**locals(), steps_name="steps")[steps]


def optimal_schedules(
    velocity: VelocityFn,
    shape: Sequence[int],
    max_steps: int,
    grid: int | Sequence[float] | np.ndarray = 100,
    num_samples: int | str = 256,
    batch_size: int = 256,
    seed: int = 0,
    solver: str | None = None,
    metric: str = "l2sq",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    backend: str = "auto",
    *,
    objective: str = DEFAULT_OBJECTIVE,
    discount: float = 1.0,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    mode: str | None = None,
    checkpoint_key: str | None = None,
    store: str = "device",
    store_dir: str | os.PathLike | None = None,
    dp: str = "full",
    max_samples: int | None = None,
) -> ScheduleSet:
    """The optimal schedule of every budget K = 1 .. ``max_steps`` from ONE search, as a ``ScheduleSet``
    (a read-only mapping ``{K: Schedule}``; ``sset.save(path)``, ``ScheduleSet.load(path)``).

    Arguments as ``optimal_schedule`` (``max_steps`` in place of ``steps``). ``result[K]`` equals
    ``optimal_schedule(..., steps=K)`` with the same arguments: the global DP's levels and the local
    Bellman table do not depend on the largest budget asked for. A local set keeps its cost matrix, so
    ``resample(K)`` for K > max_steps re-solves it exactly; a global set interpolates (``ScheduleSet``).

    Example:
        >>> scheds = optimal_schedules(lambda x, t: -x, (2,), 3, grid=10, num_samples=8)
        >>> [s.steps for s in scheds.values()], scheds[3].objective
        ([1, 2, 3], 'global')
    """
    args = dict(locals())  # the parameters, nothing else yet
    args["steps"] = args.pop("max_steps")
    return _schedules(**args, steps_name="max_steps")


def _schedules(num_samples, max_samples, checkpoint, objective, dp, **args) -> ScheduleSet:
    """Both public searches: the sample budget (fixed or "auto") and the DP checked, then ``_search``."""
    dp = check_choice(dp, DPS, "dp")
    if dp != "full" and objective != "global":
        raise ValueError(f"dp={dp!r} is a route to objective='global'; objective={objective!r} takes 'full'")
    common = {"checkpoint": checkpoint, "objective": objective, "dp": dp, **args}
    if not isinstance(num_samples, str):
        if max_samples is not None:
            raise ValueError(f"max_samples caps num_samples='auto', got num_samples={num_samples!r}")
        return _search(num_samples=num_samples, **common)
    if num_samples != "auto":
        raise ValueError(f"num_samples must be an integer >= 1 or 'auto', got {num_samples!r}")
    cap = AUTO_CAP if max_samples is None else check_int(max_samples, "max_samples", minimum=AUTO_START)
    if checkpoint is not None:
        raise ValueError("num_samples='auto' runs several searches and takes checkpoint=None")
    return auto_rounds(lambda n: _search(num_samples=n, **common), cap)


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
        >>> found = auto_rounds(lambda n: optimal_schedules(lambda x, t: -x, (2,), 2, grid=10,
        ...     num_samples=n), 1024)
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


def _search(
    velocity, shape, steps, grid, num_samples, batch_size, seed, solver, metric, device, dtype, backend, *,
    objective, discount, progress, checkpoint, mode, checkpoint_key, store, store_dir, steps_name, dp,
) -> ScheduleSet:  # fmt: skip
    """One search: every budget 1 .. ``steps`` (arguments validated here)."""
    search, steps, discount = _validate_search(
        velocity, shape, steps, steps_name, grid, num_samples, batch_size, seed, objective, solver, metric,
        device, dtype, backend, discount, mode,
    )  # fmt: skip
    search = _keyed(search, velocity, checkpoint, checkpoint_key)
    store = check_choice(store, STORES, "store")
    if search.objective == "global":
        rows = (store, store_dir)
        return _global_schedules(velocity, search, steps, progress, checkpoint, mode, rows, dp)
    cost = _local_cost(velocity, search, progress, checkpoint, mode)
    scheds = schedules_from_cost(
        cost,
        search.times,
        steps,
        discount=discount,
        backend=backend,
        metric=search.metric,
        solver=search.solver,
        num_samples=search.num_samples,
        fingerprint=search.fingerprint,
        shape=search.shape,
    )
    return ScheduleSet(scheds, cost_table=cost)
