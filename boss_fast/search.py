"""The search for a schedule from a velocity model (BOSS stage 1 end to end): stream noise batches through the
teacher, reduce the cost matrix, solve the DP.

``cost_matrix`` runs the teacher (:class:`boss_fast.trajectories.TeacherRunner`) batch after batch and adds
the per-batch (sum, count) of :func:`boss_fast.cost.trajectory_cost_sums`; memory is one batch's trajectory.
Around that pure loop: a checkpoint rewritten atomically after every batch (resume is bit-identical), and
torch.distributed (rank r of W runs batches r, r + W, ...; the float64 (sum, count) are all-reduced).
``optimal_schedule`` draws seeded noise, runs the same loop and returns the DP's ``Schedule``.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from boss_fast._checkpoint import (
    check_checkpoint_format,
    checkpoint_header,
    first_difference,
    write_checkpoint,
)
from boss_fast._runtime import module_placement, rank_world
from boss_fast._validation import (
    METRICS,
    as_times,
    check_choice,
    check_float,
    check_int,
    check_noise,
    check_teacher,
)
from boss_fast.cost import trajectory_cost_sums
from boss_fast.grids import resolve_grid
from boss_fast.ode import VelocityFn
from boss_fast.schedule import Schedule, schedule_from_cost
from boss_fast.trajectories import TeacherRunner, model_fingerprint, seeded_noise

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "cost_matrix", "optimal_schedule"]

CHECKPOINT_FORMAT = "boss_fast.cost_checkpoint"
CHECKPOINT_VERSION = 1


# ---------------------------------------------------------------------------- distribution, checkpoint


def _all_reduce_sums(sums: np.ndarray, count: int) -> tuple[np.ndarray, int]:
    """Sum (sums, count) over the default process group in float64 (NCCL needs the tensor on CUDA)."""
    dist = torch.distributed
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    packed = torch.from_numpy(np.append(sums.ravel(), float(count))).to(device)  # counts < 2**53: exact
    dist.all_reduce(packed)
    flat = packed.cpu().numpy()
    return flat[:-1].reshape(sums.shape).copy(), int(round(flat[-1]))


def _rank_path(path: str, rank: int, world: int) -> str:
    if world == 1:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.rank{rank}-of-{world}{ext}"


def _noise_digest(noise: torch.Tensor) -> str:
    data = noise.detach().contiguous().reshape(-1).cpu().view(torch.uint8).numpy()
    return "sha256:" + hashlib.sha256(data.tobytes()).hexdigest()[:16]


def _checkpoint_header(
    velocity: VelocityFn, times: np.ndarray, run: dict[str, object], identity: dict[str, str]
) -> dict[str, object]:
    model = model_fingerprint(velocity) if isinstance(velocity, torch.nn.Module) else ""
    return checkpoint_header(
        CHECKPOINT_FORMAT, CHECKPOINT_VERSION, times=times, **run, model=model, **identity
    )


def _save_checkpoint(path: str, header: dict[str, object], sums: np.ndarray, count: int, done: int) -> None:
    arrays = {key: np.asarray(value) for key, value in header.items()}
    arrays.update(sums=sums, count=np.int64(count), batches_done=np.int64(done))
    write_checkpoint(path, lambda f: np.savez(f, **arrays))


def _load_checkpoint(path: str, header: dict[str, object]) -> tuple[np.ndarray, int, int]:
    """Read a checkpoint written by ``_save_checkpoint`` and check it belongs to this run."""
    try:
        # Open the file ourselves: np.load(path) leaks its handle when the zip is corrupt.
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            stored = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"cost checkpoint {path} is unreadable (corrupted or not a checkpoint): {err}"
        ) from None
    check_checkpoint_format(str(stored.get("format", "")), CHECKPOINT_FORMAT, path, "cost checkpoint")
    key = first_difference(stored, header, lambda a, b: np.array_equal(a, np.asarray(b)))
    if key is not None and key not in stored:
        raise ValueError(f"cost checkpoint {path} lacks {key!r}; delete it or pass another path")
    if key is not None:
        raise ValueError(
            f"cost checkpoint {path} was written for a different run: {key} = {stored[key].tolist()!r} "
            f"there, {np.asarray(header[key]).tolist()!r} here; delete it or pass another checkpoint path"
        )
    sums = stored["sums"]
    if sums.shape != (len(header["times"]),) * 2 or sums.dtype != np.float64:  # type: ignore[arg-type]
        raise ValueError(f"cost checkpoint {path} holds sums of shape {sums.shape}, dtype {sums.dtype}")
    return sums.copy(), int(stored["count"]), int(stored["batches_done"])


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

    ``make_batch(start, stop)`` returns noises start .. stop - 1. Under torch.distributed, rank r of W runs
    batches r, r + W, ...; each rank checkpoints its own share to ``<root>.rank{r}-of-{W}<ext>``. Assumes
    validated arguments. ``identity`` (noise digest, dtype, ...) goes into the checkpoint header.
    """
    rank, world = rank_world()
    num_batches = -(-num_samples // batch_size)
    mine = list(range(rank, num_batches, world))
    n = len(teacher.times)
    sums, count, done = np.zeros((n, n)), 0, 0
    path, header = None, {}
    if checkpoint is not None:
        path = _rank_path(os.fspath(checkpoint), rank, world)
        run = {"metric": metric, "solver": teacher.solver, "num_samples": num_samples}
        run.update(batch_size=batch_size, rank=rank, world_size=world)
        header = _checkpoint_header(teacher.velocity, teacher.times, run, identity)
        if os.path.exists(path):
            sums, count, done = _load_checkpoint(path, header)
    bar = tqdm(
        total=len(mine), initial=done, disable=not progress or rank != 0, desc="cost matrix", unit="batch"
    )
    with bar:
        for b in mine[done:]:
            noise = make_batch(b * batch_size, min((b + 1) * batch_size, num_samples))
            if device is not None:
                noise = noise.to(device)
            traj = teacher(noise)
            batch_sums, batch_count = trajectory_cost_sums(traj.states, traj.velocities, traj.times, metric)
            sums, count, done = sums + batch_sums, count + batch_count, done + 1
            del traj  # free this batch's trajectory before the next one is allocated
            if path is not None:
                _save_checkpoint(path, header, sums, count, done)
            bar.update(1)
    if world > 1:
        sums, count = _all_reduce_sums(sums, count)
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
            torch.distributed each rank writes ``<root>.rank{r}-of-{W}<ext>``.
        mode: None runs ``teacher_trajectory``'s plain loop; "eager", "compile", "cuda_graph" or "auto"
            runs the teacher on a recording :class:`boss_fast.sampler.Sampler`, built once per batch shape
            and replayed for every batch (on CUDA, "cuda_graph" captures the whole grid as one graph).

    Under torch.distributed (initialised process group), rank r of W runs batches r, r + W, ..., the
    float64 (sum, count) are all-reduced and every rank returns the same matrix.
    """
    noise = check_noise(noise)
    t = as_times(times)
    batch_size = check_int(batch_size, "batch_size")
    solver = check_teacher(solver, mode)
    metric = check_choice(metric, METRICS, "metric")
    identity = {}
    if checkpoint is not None:
        identity = {
            "noise": _noise_digest(noise),
            "sample_shape": str(tuple(noise.shape[1:])),
            "dtype": str(noise.dtype),
        }
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


def _budget_and_grid(steps: object, grid: object) -> tuple[int, np.ndarray]:
    """The step budget K and the grid (an int n is ``uniform_grid(n)``), K < the grid's points."""
    steps = check_int(steps, "steps")
    times = resolve_grid(grid)
    if steps >= len(times):
        raise ValueError(
            f"steps must be < the grid's {len(times)} points (at most {len(times) - 1}), got {steps}"
        )
    return steps, times


def _placement(
    velocity: VelocityFn, device: torch.device | str | None, dtype: torch.dtype | None
) -> tuple[torch.device, torch.dtype]:
    """Where the teacher runs: the arguments, else the model's first floating parameter, else CPU and
    torch's default dtype."""
    model_device, model_dtype = module_placement(velocity)
    device = torch.device(device) if device is not None else (model_device or torch.device("cpu"))
    dtype = dtype or model_dtype or torch.get_default_dtype()
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    return device, dtype


def optimal_schedule(
    velocity: VelocityFn,
    shape: Sequence[int],
    steps: int,
    grid: int | Sequence[float] | np.ndarray = 100,
    num_samples: int = 256,
    batch_size: int = 256,
    seed: int = 0,
    solver: str = "euler",
    metric: str = "l2sq",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    backend: str = "auto",
    *,
    discount: float = 1.0,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    mode: str | None = None,
) -> Schedule:
    """BOSS stage 1 end to end: the Bellman-optimal ``steps``-step schedule of a velocity model.

    Draws ``num_samples`` Gaussian noises (``seeded_noise``: sample m depends only on (seed, m), so the draw
    does not depend on ``batch_size``, the device or the number of processes), runs the teacher on the grid
    in batches (memory: one batch's trajectory), averages the cost matrix (``boss_fast.cost``) and solves the
    DP (``boss_fast.bellman``). Use ``cost_matrix`` + ``schedules_from_cost`` to get every budget at once.

    Args:
        velocity: ``velocity(x, t)``, t = 0 noise, t = 1 data.
        shape: the shape of ONE sample, without the batch dimension, e.g. (3, 32, 32).
        steps: the budget K, 1 <= K <= N - 1 (an int).
        grid: an int n for ``uniform_grid(n)``, or explicit grid times (N,) in [0, 1].
        num_samples, batch_size: noises in total and per teacher batch (reference: 100 noises).
        seed: seed of the noise stream (>= 0).
        solver: teacher solver; metric: "l2sq" (BOSS) or "l2" (GITS).
        device, dtype: where and in what dtype the teacher runs; default: the model's first floating
            parameter's device and dtype when it is an ``nn.Module``, else CPU and torch's default dtype.
        backend: DP backend, see ``boss_fast.bellman``.
        discount: the DP's discount on later steps (GITS); 1.0 is BOSS.
        progress, checkpoint, mode: as in :func:`cost_matrix` (mode: the teacher on a recording
            ``Sampler``, e.g. "cuda_graph").

    Returns:
        A ``Schedule``; its ``fingerprint`` is ``model_fingerprint(velocity)`` for a module, else None.
    """
    shape = tuple(check_int(s, "shape entry") for s in shape)
    steps, times = _budget_and_grid(steps, grid)
    num_samples = check_int(num_samples, "num_samples")
    batch_size = check_int(batch_size, "batch_size")
    seed = check_int(seed, "seed", minimum=0)
    solver = check_teacher(solver, mode)
    metric = check_choice(metric, METRICS, "metric")
    discount = check_float(discount, "discount")
    device, dtype = _placement(velocity, device, dtype)
    identity = {"noise": f"seeded_noise(seed={seed})", "sample_shape": str(shape), "dtype": str(dtype)}
    cost = _accumulate_cost(
        TeacherRunner(velocity, times, solver, mode),
        lambda start, stop: seeded_noise(shape, start, stop, seed=seed, dtype=dtype),
        num_samples,
        batch_size=batch_size,
        metric=metric,
        device=device,
        progress=progress,
        checkpoint=checkpoint,
        identity=identity,
    )
    fingerprint = model_fingerprint(velocity) if isinstance(velocity, torch.nn.Module) else None
    return schedule_from_cost(
        cost,
        times,
        steps,
        discount=discount,
        backend=backend,
        metric=metric,
        solver=solver,
        num_samples=num_samples,
        fingerprint=fingerprint,
        shape=shape,
    )
