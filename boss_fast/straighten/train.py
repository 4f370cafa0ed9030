"""Training a straightening run: ``straighten`` resolves the run, makes the pairs, sets up the student (a copy
or the model itself, LoRA or every weight), then takes Adam steps with linear warm-up, gradient clipping at
1.0 and an EMA, checkpointing between them, and returns the EMA weights, merged.

Nguyen, Nguyen & Nguyen (ICLR 2024), section 4: the student (initialised from the teacher's weights) is
trained so that one Euler step of each interval lands on the teacher:

    L = E_{m, k} || v_theta(x_k, tau_k) - (x_{k+1} - x_k) / (tau_{k+1} - tau_k) ||^2.

Under ``torch.distributed`` (a process group initialised) the student is wrapped in DDP and the global batch
is split across ranks: the same result as one process up to float rounding.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, overload

import torch
from torch import nn
from tqdm.auto import tqdm

from boss_fast._identity import model_fingerprint
from boss_fast._runtime import module_placement, rank_world
from boss_fast._validation import check_noise, check_teacher
from boss_fast.ode import VelocityFn, for_rows
from boss_fast.schedule import Schedule
from boss_fast.straighten.checkpoint import (
    CHECKPOINT_NAME,
    TrainState,
    check_not_past,
    check_resumable,
    checkpoint_config,
    checkpoint_header,
    teacher_identity,
)
from boss_fast.straighten.lora import add_lora, merge_lora
from boss_fast.straighten.loss import pair_loss
from boss_fast.straighten.pairs import StraighteningPairs, check_schedule, straightening_pairs
from boss_fast.straighten.settings import StraightenSettings
from boss_fast.trajectories import seeded_noise

__all__ = ["StraightenStats", "straighten"]


@dataclass(frozen=True)
class StraightenStats:
    """What a straightening run did: parameters trained and the last loss values."""

    trained_params: int
    total_params: int
    steps: int
    losses: tuple[float, ...]

    @property
    def trained_share(self) -> float:
        """Trained parameters / the base model's parameters (LoRA rank 4 on the digits DiT: about 5%)."""
        return self.trained_params / self.total_params


def _infer_shape(model: nn.Module) -> tuple[int, ...]:
    """One sample's shape from the model's ``sample_shape`` attribute (the bundled DiT has one)."""
    shape = getattr(model, "sample_shape", None)
    if shape is None:
        raise ValueError(f"cannot infer one sample's shape for {type(model).__name__}: pass shape=(C, H, W)")
    return tuple(int(s) for s in shape)


def _check_output_shape(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        out = model(x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"model output {got} differs from its input {tuple(x.shape)}: a velocity model must return a "
            "tensor shaped like x"
        )


@dataclass(frozen=True)
class _Run:
    """One straightening run: its settings and what they resolve to against the model and the schedule."""

    settings: StraightenSettings
    sched: Schedule
    solver: str
    device: torch.device
    dtype: torch.dtype
    banked: bool  # the model holds a bank of conditionings (for_rows): pair row r uses noise r // K's

    def config(self, num_pairs: int, world: int) -> dict:
        """The checkpoint header's settings (:func:`~boss_fast.straighten.checkpoint.checkpoint_config`)."""
        return checkpoint_config(self.settings, self.sched, self.solver, num_pairs, world)


def _resolve_run(model: object, sched: object, settings: object, device: torch.device | str | None) -> _Run:
    """Check ``straighten``'s model, schedule and settings together, in one place."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module to fine-tune, got {type(model).__name__}")
    settings = StraightenSettings() if settings is None else settings
    if not isinstance(settings, StraightenSettings):
        raise TypeError(f"settings must be a StraightenSettings or None, got {type(settings).__name__}")
    sched = check_schedule(sched, settings.grid, settings.solver)
    solver = sched.solver if settings.solver is None else settings.solver
    solver = check_teacher(solver, settings.teacher_mode, "teacher_mode")
    world = rank_world()[1]
    if settings.batch_size % world:
        raise ValueError(f"batch_size {settings.batch_size} must be divisible by the world size {world}")
    model_device, model_dtype = module_placement(model)
    device = torch.device(device) if device is not None else (model_device or torch.device("cpu"))
    dtype = model_dtype or torch.get_default_dtype()
    banked = callable(getattr(model, "for_rows", None))
    return _Run(settings, sched, solver, device, dtype, banked)


def _pair_noise(model: nn.Module, run: _Run, noise: torch.Tensor | None, shape) -> torch.Tensor:
    """The given noise, else ``seeded_noise`` of the model's (or the given) sample shape, in run.dtype."""
    if noise is None:
        shape = tuple(shape) if shape is not None else (run.sched.shape or _infer_shape(model))
        noise = seeded_noise(shape, 0, run.settings.num_pairs, seed=run.settings.seed, dtype=run.dtype)
    return check_noise(noise).to(dtype=run.dtype)


def _student_base(model: nn.Module, run: _Run, noise: torch.Tensor) -> nn.Module:
    """The student before training: ``model`` itself (``memory.in_place``) or one copy of it, on run.device,
    in eval mode with gradients off, as the teacher of the pairs sees it."""
    student = model if run.settings.memory.in_place else copy.deepcopy(model)
    student = student.to(run.device).eval().requires_grad_(False)
    _check_output_shape(student, noise[:2].to(run.device))
    return student


def _trainable(student: nn.Module, run: _Run) -> tuple[nn.Module, list[torch.Tensor]]:
    """The student LoRA-wrapped (adapters only trainable) or fully trainable, in train mode, and its trained
    parameters."""
    if run.settings.lora_rank is not None:
        s = run.settings
        student = add_lora(student, s.lora_rank, s.lora_targets, s.lora_alpha, seed=s.seed)
    else:
        student.requires_grad_(True)
    student.train()
    return student, [p for p in student.parameters() if p.requires_grad]


class _Banked(nn.Module):
    """The student over a bank of conditionings: ``forward(x, t, rows)`` with the pairs' global rows (row
    m * K + k is noise m's) runs ``for_rows(student, rows // K)``; a module, so DDP can wrap it."""

    def __init__(self, student: nn.Module, steps: int) -> None:
        super().__init__()
        self.student, self.steps = student, steps

    def forward(self, x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return for_rows(self.student, torch.div(rows, self.steps, rounding_mode="floor"))(x, t)


def _checkpointed_blocks(module: nn.Module) -> list[nn.Module]:
    """The items of ``module``'s outermost ``nn.ModuleList``s (a list inside a chosen item is skipped)."""
    prefixes: list[str] = []
    blocks: list[nn.Module] = []
    for name, sub in module.named_modules():
        if isinstance(sub, nn.ModuleList) and not any(name.startswith(p + ".") for p in prefixes):
            prefixes.append(name)
            blocks.extend(sub)
    return blocks


@contextlib.contextmanager
def _gradient_checkpointing(student: nn.Module, enabled: bool):
    """Gradient checkpointing on ``student`` while the block runs (see ``StraightenMemory``)."""
    if not enabled:
        yield
        return
    native = [m for m in student.modules() if getattr(m, "_supports_gradient_checkpointing", False)]
    blocks = [] if native else _checkpointed_blocks(student)
    if not native and not blocks:
        raise ValueError(
            f"gradient_checkpointing: {type(student).__name__} has no enable_gradient_checkpointing() and no "
            "nn.ModuleList of blocks to checkpoint"
        )
    for module in native:
        module.enable_gradient_checkpointing()
    for block in blocks:  # non-reentrant: gradients reach adapters inside even when the input needs none
        block.forward = functools.partial(
            torch.utils.checkpoint.checkpoint, block.forward, use_reentrant=False
        )
    try:
        yield
    finally:
        for module in native:
            module.disable_gradient_checkpointing()
        for block in blocks:
            del block.forward  # back to the class's forward


def _warn_other_model(sched: Schedule, model_fp: str) -> None:
    if sched.fingerprint is not None and sched.fingerprint != model_fp:
        warnings.warn(
            f"the schedule was searched on another model (fingerprint {sched.fingerprint}, this model's "
            f"is {model_fp}): its steps may not suit this one",
            UserWarning,
            stacklevel=4,
        )


def _autocast(run: _Run) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in ``memory.autocast`` on run.device, or nothing (the default's exact bits)."""
    autocast = run.settings.memory.autocast
    if autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(run.device.type, dtype=autocast)


def _step_sizes(pairs: StraighteningPairs, rows: torch.Tensor, ndim: int) -> torch.Tensor:
    """tau_{k+1} - tau_k of the pairs' ``rows``, shaped to broadcast over states of ``ndim`` dimensions."""
    return (pairs.t_end[rows] - pairs.t_start[rows]).view(-1, *[1] * (ndim - 1))


def _step_batch(
    trainer: nn.Module, pairs: StraighteningPairs, rows: torch.Tensor, run: _Run,
    host_rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(inputs, target velocities) of the pairs' ``rows``: from the teacher's state at tau_k ("teacher"), or
    from the sampler's own (``inputs="sampler"``: :func:`_sampler_states`), the velocity one Euler step must
    have to land on the teacher's state at tau_{k+1}. ``host_rows``: the same rows on the host, if at hand
    (the sampler's states are planned from them without reading the device)."""
    if run.settings.inputs == "teacher":
        x = pairs.start[rows]
    else:
        x = _sampler_states(trainer, pairs, rows, run, rows.cpu() if host_rows is None else host_rows)
    return x, (pairs.end[rows] - x) / _step_sizes(pairs, rows, x.ndim)


def _sampler_states(
    trainer: nn.Module, pairs: StraighteningPairs, rows: torch.Tensor, run: _Run, host_rows: torch.Tensor
) -> torch.Tensor:
    """The few-step sampler's states at each row's tau_k: the student's Euler steps 0 .. k - 1 from its
    noise's start state (row m * K), with the current weights and no gradient; for k = 0 the start state.
    Row by row what ``bf.sample`` does (each row's own conditioning through ``_Banked``). Which rows take
    step j is planned on the host (``host_rows``), so the loop never waits for the device."""
    steps = run.sched.steps
    k = torch.remainder(host_rows, steps)
    first = rows - torch.remainder(rows, steps)
    x = pairs.start[first]
    net = trainer.module if isinstance(trainer, nn.parallel.DistributedDataParallel) else trainer
    with torch.no_grad(), _autocast(run):
        for j in range(int(k.max())):
            live = torch.nonzero(k > j).squeeze(1).to(rows.device)
            r = first[live] + j
            xs = x[live]
            v = net(xs, pairs.t_start[r], r) if run.banked else net(xs, pairs.t_start[r])
            x = x.index_copy(0, live, xs + _step_sizes(pairs, r, x.ndim) * v.to(x.dtype))
    return x


def _train_step(state: TrainState, trainer: nn.Module, pairs: StraighteningPairs, run: _Run) -> float:
    """One optimiser step on a uniformly drawn batch of pairs; returns the global batch's mean loss."""
    s = run.settings
    rank, world = rank_world()
    local = s.batch_size // world
    # Same global draw on every rank (the generator is replicated); rank r trains on its slice.
    host_rows = torch.randint(0, pairs.start.shape[0], (s.batch_size,), generator=state.generator)
    host_rows = host_rows[rank * local : (rank + 1) * local]
    rows = host_rows.to(run.device)
    for group in state.optimizer.param_groups:
        group["lr"] = s.lr * min(1.0, (state.step + 1) / s.warmup) if s.warmup else s.lr
    x, target = _step_batch(trainer, pairs, rows, run, host_rows)
    with _autocast(run):
        pred = trainer(x, pairs.t_start[rows], rows) if run.banked else trainer(x, pairs.t_start[rows])
    per = pair_loss(pred.to(target.dtype), target, s.loss, normalize=s.normalize)
    # sum / global batch, times world: DDP averages the ranks' gradients, giving the global mean.
    value = per.sum() * (world / s.batch_size)
    state.optimizer.zero_grad(set_to_none=True)
    value.backward()
    torch.nn.utils.clip_grad_norm_(state.params, 1.0)
    state.optimizer.step()
    state.update_ema(min(s.ema, (1.0 + state.step) / (10.0 + state.step)) if s.ema_warmup else s.ema)
    state.step += 1
    detached = value.detach().clone()
    if world > 1:  # the global batch's mean loss on every rank (one small all-reduce per step)
        torch.distributed.all_reduce(detached)
    reported = float(detached) / world
    state.losses.append(reported)
    return reported


def _train(state, student, pairs, run: _Run, checkpoint: tuple | None, callback, progress) -> None:
    """Steps until ``iters``; rank 0 writes ``checkpoint`` = (path, header) every ``checkpoint_every``."""
    s = run.settings
    rank, world = rank_world()
    trainer = _Banked(student, run.sched.steps) if run.banked else student
    trainer = nn.parallel.DistributedDataParallel(trainer, broadcast_buffers=False) if world > 1 else trainer
    bar = tqdm(
        total=s.iters, initial=min(state.step, s.iters), desc="straighten", disable=not progress or rank
    )
    checkpointing = _gradient_checkpointing(student, s.memory.gradient_checkpointing)
    with torch.enable_grad(), checkpointing:  # callers may hold no_grad (the demo does)
        while state.step < s.iters:
            reported = _train_step(state, trainer, pairs, run)
            bar.update(1)
            if callback is not None:
                callback(state.step, reported)
            due = state.step % s.checkpoint_every == 0 or state.step == s.iters
            if checkpoint is not None and rank == 0 and due:
                state.save(*checkpoint)
    bar.close()


@overload
def straighten(
    model: nn.Module,
    sched: Schedule,
    teacher: VelocityFn | None = None,
    settings: StraightenSettings | None = None,
    *,
    shape: Sequence[int] | None = None,
    noise: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    callback: Callable[[int, float], None] | None = None,
    return_stats: Literal[False] = False,
) -> nn.Module: ...


@overload
def straighten(
    model: nn.Module,
    sched: Schedule,
    teacher: VelocityFn | None = None,
    settings: StraightenSettings | None = None,
    *,
    shape: Sequence[int] | None = None,
    noise: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    callback: Callable[[int, float], None] | None = None,
    return_stats: Literal[True],
) -> tuple[nn.Module, StraightenStats]: ...


def straighten(
    model: nn.Module,
    sched: Schedule,
    teacher: VelocityFn | None = None,
    settings: StraightenSettings | None = None,
    *,
    shape: Sequence[int] | None = None,
    noise: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    callback: Callable[[int, float], None] | None = None,
    return_stats: bool = False,
) -> nn.Module | tuple[nn.Module, StraightenStats]:
    """BOSS stage 2: fine-tune ``model`` so that Euler steps on ``sched`` follow the teacher.

    Pairs: ``straightening_pairs(teacher, sched, seeded_noise(shape, 0, num_pairs, seed=seed))`` (or the given
    ``noise``). Each iteration draws ``batch_size`` rows uniformly over every (noise, interval) pair, with a
    generator seeded by ``seed``, and takes one Adam step on the mean per-sample loss (``pair_loss``) of
    ``v(x_k, tau_k)`` against ``(x_{k+1} - x_k) / (tau_{k+1} - tau_k)``; the learning rate rises linearly
    over ``warmup`` steps, gradients are clipped to norm 1.0, and an EMA of the trained weights (decay
    ``ema``, warmed up, see ``ema_warmup``; 0 keeps the last weights) is what is returned. The knobs named
    here are :class:`StraightenSettings` fields; the keywords are the run's data and handles.

    Args:
        model: the ``nn.Module`` ``model(x, t)``; not modified (the student is a copy) unless
            ``settings.memory.in_place``. A ``model`` with a bank (``for_rows``) pairs noise m with
            conditioning m mod P, pairs and steps.
        sched: the ``Schedule`` to straighten for, chosen on ``settings.grid`` with ``settings.solver``.
        teacher: ``velocity(x, t)`` producing the pairs; default the student before training (no copy).
        settings: :class:`StraightenSettings`; None: its defaults.
        shape: one sample's shape for the noises; default the schedule's ``shape`` (where it was searched),
            else the model's ``sample_shape``. A schedule from another model (its ``fingerprint``) is warned
            about. noise: (M, ...) the pairs' noises instead of ``seeded_noise``.
        device: where to train (default the model's). progress: tqdm bars.
        checkpoint_dir: if set, ``straighten.pt`` there is written atomically every
            ``settings.checkpoint_every`` steps and at the end (student, EMA, optimiser, step, RNG states, and
            a header with the schedule, the model's and the teacher's fingerprints, the noise's digest, the
            settings and a SHA-256 of the rest); a run finding one resumes from it, and refuses one from
            another model, teacher, noise, schedule or settings, one failing its checksum, or one whose run
            went past ``settings.iters`` (a run at or before it resumes: more iterations extend a shorter
            run exactly as one longer run). Resuming is bit-identical.
        cache_dir: the pair cache (``straightening_pairs``).
        callback: ``callback(step, loss)`` after each step.
        return_stats: also return what the run did, :class:`StraightenStats` (parameters trained, losses).

    Returns:
        The straightened module in eval mode with gradients off, called like ``model``; with
        ``return_stats=True`` the pair ``(module, StraightenStats)``.

    Under torch.distributed (e.g. torchrun) the student is wrapped in DDP, each rank takes its slice of the
    same global batch (``batch_size`` divisible by the world size), pairs are made once; rank 0 checkpoints.

    Example (a 1-step schedule on the grid [0, 1]):
        >>> import numpy as np
        >>> from boss_fast.models import MLPVelocity
        >>> sched = Schedule(np.array([0.0, 1.0]), np.array([0, 1]), 0.0, np.array([0.0, 1.0]), shape=(2,))
        >>> settings = StraightenSettings(iters=3, num_pairs=4, grid=(0.0, 1.0))
        >>> student, stats = straighten(MLPVelocity(), sched, settings=settings, progress=False,
        ...                             return_stats=True)
        >>> student.training, stats.steps, len(stats.losses)
        (False, 3, 3)
    """
    run = _resolve_run(model, sched, settings, device)
    result, stats = _fit(model, teacher, run, (noise, shape), (checkpoint_dir, cache_dir), callback, progress)
    return (result, stats) if return_stats else result


def _fit(model, teacher, run: _Run, noise_shape: tuple, dirs: tuple, callback, progress: bool) -> tuple:
    """:func:`straighten`'s run after validation: ``(module, StraightenStats)``.

    The pieces, in order: draw the pairs' noise (``noise_shape`` = (noise, shape)), copy the student (or take
    the model, ``memory.in_place``), generate the pairs with it as the teacher (``straightening_pairs``), make
    it trainable (LoRA set-up with ``lora_rank``), start or resume the train state (Adam, EMA, generator;
    ``dirs`` = (checkpoint_dir, cache_dir)), train (``_train_step`` per step, checkpoints between), then the
    EMA weights, merged.
    """
    s = run.settings
    checkpoint_dir, cache_dir = dirs
    noise = _pair_noise(model, run, *noise_shape)
    total = sum(p.numel() for p in model.parameters())
    model_fp = model_fingerprint(model)  # before in_place training or adapters change it
    teacher_id = model_fp if teacher is None else teacher_identity(teacher)
    header = checkpoint_header(
        model_fp, run.sched, run.config(noise.shape[0], rank_world()[1]), teacher_id, noise
    )
    path = os.path.join(os.fspath(checkpoint_dir), CHECKPOINT_NAME) if checkpoint_dir is not None else None
    saved = None
    if path is not None and os.path.exists(path):  # another run's checkpoint: refused before the teacher runs
        saved = check_resumable(path, header, "cpu")  # on the host until the student takes it up
        check_not_past(int(saved["step"]), s.iters, path)
    student = _student_base(model, run, noise)
    pairs = straightening_pairs(
        student if teacher is None else teacher, run.sched, noise, grid=run.sched.grid, solver=run.solver,
        batch_size=s.pair_batch_size, cache_dir=cache_dir, device=run.device, progress=progress,
        mode=s.teacher_mode, pair_teacher=s.pair_teacher,
    )  # fmt: skip
    student, params = _trainable(student, run)
    _warn_other_model(run.sched, model_fp)
    state = TrainState.start(params, s.lr, s.seed)
    if saved is not None:
        state.resume(saved)
        del saved
    checkpoint = None if path is None else (path, header)
    _train(state, student, pairs, run, checkpoint, callback, progress)
    state.use_ema()
    result = merge_lora(student) if (s.lora_rank is not None and s.merge) else student
    result.eval().requires_grad_(False)
    return result, StraightenStats(sum(p.numel() for p in params), total, state.step, tuple(state.losses))
