"""Straightening (BOSS stage 2): fine-tune a velocity network for exactly the steps its schedule takes.

Nguyen, Nguyen & Nguyen (ICLR 2024), section 4: from M noises run the teacher's fine trajectory on the
schedule's base grid, keep the states at the schedule's times tau_0 < ... < tau_K, and train the student
(initialised from the teacher's weights) so that one Euler step of each interval lands on the teacher:

    L = E_{m, k} || v_theta(x_k, tau_k) - (x_{k+1} - x_k) / (tau_{k+1} - tau_k) ||^2.

Conventions: t in [0, 1], t = 0 noise, t = 1 data; ``velocity(x, t)`` with x (B, ...) and t (B,).

Losses (per sample; always a mean over the batch):

- ``"l2"``: the squared error above, averaged (not summed) over the d = prod(x.shape[1:]) dimensions, so the
  learning rate does not depend on the image size (a sum would scale every gradient by d = 64 on digits).
- ``"pseudo_huber"``: ``sqrt(||e||^2 + c^2) - c`` with ||e|| the L2 norm over all dimensions and
  ``c = 0.00054 * sqrt(d)`` (Song & Dhariwal 2023; Lee et al. 2024): quadratic below c, linear above.
- ``normalize=True`` weights each sample's loss by ``1 / stopgrad(loss)`` (Simple ReFlow, Kim et al. 2025):
  every pair then contributes a unit-size gradient step, whatever its error.

Orchestration around the pure loss: streamed and cached pair generation, Adam with linear warm-up,
gradient clipping at 1.0, EMA, LoRA through peft, atomic checkpoints with resume, and DDP when a
``torch.distributed`` process group is initialised (the global batch is split across ranks; same result as
one process up to float rounding).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import pickle
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from boss_fast._validation import (
    as_times,
    atomic_write,
    check_choice,
    check_float,
    check_int,
    check_noise,
    check_teacher,
)
from boss_fast.grids import uniform_grid
from boss_fast.schedule import Schedule
from boss_fast.trajectories import VelocityFn, model_fingerprint, seeded_noise, teacher_trajectory

__all__ = [
    "LOSSES",
    "StraighteningPairs",
    "StraightenStats",
    "default_lora_targets",
    "merge_lora",
    "pair_loss",
    "straighten",
    "straightening_pairs",
]

LOSSES: tuple[str, ...] = ("l2", "pseudo_huber")
CHECKPOINT_FORMAT = "boss_fast.straighten"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "straighten.pt"
# Song & Dhariwal (2023) use c = 0.00054 * sqrt(d) for images in [-1, 1]; the digits are in [-1, 1] too.
PSEUDO_HUBER_C = 0.00054
# The bundled DiT's attention and MLP Linear layers (qkv, proj, mlp.0, mlp.2 of every block).
_DIT_LORA_TARGETS = r".*blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(0|2))"


# ----------------------------------------------------------------------------------------------- pairs


class StraighteningPairs(NamedTuple):
    """Training pairs, one row per (noise m, interval k), row ``m * K + k``.

    Attributes:
        start: (M * K, ...) teacher states at tau_k.
        end: (M * K, ...) teacher states at tau_{k+1}.
        t_start: (M * K,) tau_k in the states' dtype.
        t_end: (M * K,) tau_{k+1} in the states' dtype.
    """

    start: torch.Tensor
    end: torch.Tensor
    t_start: torch.Tensor
    t_end: torch.Tensor


def _resolve_grid(grid: int | Sequence[float] | np.ndarray) -> np.ndarray:
    if isinstance(grid, int | np.integer) and not isinstance(grid, bool):
        return uniform_grid(int(grid))
    return as_times(grid, "grid")


def _check_schedule(sched: object, grid: int | Sequence[float] | np.ndarray, solver: str) -> Schedule:
    """The schedule must be a ``Schedule`` (flow time, t = 0 noise) chosen on ``grid`` by ``solver``."""
    if not isinstance(sched, Schedule):
        raise TypeError(
            f"sched must be a boss_fast.Schedule (flow time, t = 0 noise, t = 1 data), got "
            f"{type(sched).__name__}; build one with optimal_schedule or Schedule.load"
        )
    expected = _resolve_grid(grid)
    if sched.grid.shape != expected.shape or not np.array_equal(sched.grid, expected):
        raise ValueError(
            f"the schedule was chosen on a grid of {len(sched.grid)} points "
            f"[{float(sched.grid[0])!r} .. {float(sched.grid[-1])!r}] but grid={_describe(grid)} gives "
            f"{len(expected)} points [{float(expected[0])!r} .. {float(expected[-1])!r}]: "
            "pass the schedule's own grid"
        )
    if sched.solver != solver:
        raise ValueError(
            f"the schedule was chosen with a {sched.solver!r} teacher but solver={solver!r}: "
            "the pairs must come from the trajectory the schedule was optimised for"
        )
    return sched


def _describe(grid: object) -> str:
    return repr(grid) if isinstance(grid, int | np.integer) else f"<{len(np.asarray(grid))} times>"


def _cache_key(teacher: VelocityFn, sched: Schedule, noise: torch.Tensor, solver: str, shard: int) -> str:
    """Identity of a pair cache: teacher weights, grid, indices, solver, noise bytes and shard size."""
    digest = hashlib.sha256()
    ident = (
        model_fingerprint(teacher) if isinstance(teacher, nn.Module) else getattr(teacher, "__qualname__", "")
    )
    digest.update(json.dumps([ident, sched.grid.tolist(), sched.indices.tolist(), solver, shard]).encode())
    digest.update(f"{noise.dtype}:{tuple(noise.shape)}".encode())
    digest.update(noise.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


def _teacher_states(
    teacher: VelocityFn,
    noise: torch.Tensor,
    sched: Schedule,
    solver: str,
    device: torch.device,
    mode: str | None = None,
    samplers: dict | None = None,
) -> torch.Tensor:
    """(B, K + 1, ...) teacher states at the schedule's times; memory: one batch's grid trajectory.

    With a ``mode`` the teacher runs on a recording ``Sampler``, one per batch shape kept in ``samplers``."""
    noise = noise.to(device)
    if mode is None:
        traj = teacher_trajectory(teacher, noise, sched.grid, solver, keep="states")
    else:
        from boss_fast.sampler import Sampler  # the sampler builds on the trajectories module

        samplers = {} if samplers is None else samplers
        key = (tuple(noise.shape), noise.dtype, noise.device)
        if key not in samplers:
            b, dtype, dev = noise.shape[0], noise.dtype, noise.device
            samplers[key] = Sampler(teacher, sched.grid, mode, b, dtype, dev, solver=solver, record="states")
        traj = samplers[key].trajectory(noise, check_finite=True)
    index = torch.tensor(sched.indices.tolist(), device=traj.states.device)
    return traj.states.index_select(0, index).transpose(0, 1).contiguous()


def _load_shard(path: str, expected: tuple[int, ...]) -> torch.Tensor | None:
    from safetensors.torch import load_file

    try:
        states = load_file(path)["states"]
    except (OSError, KeyError, RuntimeError, ValueError):
        return None  # unreadable or foreign: recompute (the write is atomic, so this is rare)
    return states if tuple(states.shape) == expected else None


def _shard_states(
    teacher: VelocityFn,
    noise: torch.Tensor,
    sched: Schedule,
    solver: str,
    batch_size: int,
    device: torch.device,
    cache_dir: str | os.PathLike | None,
    progress: bool,
    mode: str | None = None,
) -> torch.Tensor:
    """(M, K + 1, ...) states, batch by batch; each batch is a cache shard when ``cache_dir`` is set.

    Under torch.distributed, rank r computes shards r, r + W, ... and broadcasts them, so the teacher's cost
    is split across ranks and every rank ends with the same tensor.
    """
    from safetensors.torch import save

    rank, world = _dist_rank_world()
    m, k1 = noise.shape[0], len(sched.indices)
    out = noise.new_empty((m, k1, *noise.shape[1:]), device=device)
    folder = None
    if cache_dir is not None:
        folder = os.path.join(os.fspath(cache_dir), _cache_key(teacher, sched, noise, solver, batch_size))
        os.makedirs(folder, exist_ok=True)
    starts = list(range(0, m, batch_size))
    samplers: dict = {}
    bar = tqdm(starts, desc="straightening pairs", disable=not progress or rank != 0, leave=False)
    for s, start in enumerate(bar):
        stop = min(start + batch_size, m)
        owner = s % world
        if owner == rank:
            states = None
            path = os.path.join(folder, f"shard{start:09d}-{stop:09d}.safetensors") if folder else None
            if path is not None and os.path.exists(path):
                states = _load_shard(path, (stop - start, k1, *noise.shape[1:]))
            if states is None:
                states = _teacher_states(
                    teacher, noise[start:stop], sched, solver, device, mode, samplers
                ).cpu()
                if path is not None:
                    blob = save({"states": states.contiguous()})
                    atomic_write(path, lambda f, b=blob: f.write(b))
            out[start:stop] = states.to(device=device, dtype=noise.dtype)
        if world > 1:
            torch.distributed.broadcast(out[start:stop], src=owner)
    return out


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
    solver: str = "euler",
    *,
    batch_size: int = 500,
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    mode: str | None = None,
) -> StraighteningPairs:
    """The (x at tau_k, x at tau_{k+1}, tau_k, tau_{k+1}) pairs of the teacher's fine trajectory.

    Runs ``teacher_trajectory`` on ``sched.grid`` for the noises in batches of ``batch_size`` (memory: one
    batch's (N, B, ...) trajectory plus the (M, K + 1, ...) kept states) and keeps the states at
    ``sched.indices``; with an Euler teacher they equal a direct teacher run bit for bit.

    Args:
        teacher: ``velocity(x, t)``; t = 0 noise, t = 1 data.
        sched: a ``Schedule`` chosen on ``grid`` with ``solver``; anything else raises.
        noise: (M, ...) floating tensor, the states at t = sched.grid[0].
        grid: an int n (``uniform_grid(n)``) or explicit times; must equal ``sched.grid``.
        solver: the teacher's solver; must equal ``sched.solver``.
        batch_size: noises per teacher batch, and per cache shard.
        cache_dir: if set (``teacher`` must then be an ``nn.Module``), every batch is a shard file under
            ``cache_dir/<key>/`` written atomically; the key hashes the teacher's weights, the grid, the
            indices, the solver, the noise and ``batch_size``, so later runs (and concurrent ones) reuse
            finished shards and never mix foreign ones.
        device: where the teacher runs; default the noise's device.
        mode: None runs ``teacher_trajectory``'s plain loop; "eager", "compile", "cuda_graph" or "auto" runs
            the teacher on a recording :class:`boss_fast.sampler.Sampler`, built once per batch shape and
            replayed (the same states in "eager").

    Returns:
        ``StraighteningPairs`` with M * K rows (row m * K + k), on ``device``, in the noise's dtype.
    """
    solver = check_teacher(solver, mode)
    sched = _check_schedule(sched, grid, solver)
    noise = check_noise(noise)
    batch_size = check_int(batch_size, "batch_size")
    device = torch.device(device) if device is not None else noise.device
    if cache_dir is not None and not isinstance(teacher, nn.Module):
        raise TypeError(
            "cache_dir needs the teacher as an nn.Module: its weights' fingerprint keys the cache, and a "
            f"plain {type(teacher).__name__} cannot be told apart from another"
        )
    states = _shard_states(teacher, noise, sched, solver, batch_size, device, cache_dir, progress, mode)
    return _flatten_pairs(states, sched.times)


# ------------------------------------------------------------------------------------------------ loss


def pair_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    loss: str = "l2",
    *,
    normalize: bool = False,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Per-sample straightening loss (B,) between predicted and target velocities (B, ...).

    ``"l2"``: mean over dimensions of the squared error. ``"pseudo_huber"``: ``sqrt(||e||^2 + c^2) - c``,
    c = 0.00054 * sqrt(d). ``normalize``: multiply by ``1 / stopgrad(loss + eps)`` (Simple ReFlow), so each
    sample's value is about 1 and its gradient has unit scale.
    """
    err = (pred - target).flatten(1)
    if loss == "l2":
        per = err.square().mean(dim=1)
    elif loss == "pseudo_huber":
        c = PSEUDO_HUBER_C * math.sqrt(err.shape[1])
        per = torch.sqrt(err.square().sum(dim=1) + c * c) - c
    else:
        raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(map(repr, LOSSES))}")
    if normalize:
        per = per / (per.detach() + eps)
    return per


# ------------------------------------------------------------------------------------------------ LoRA


def default_lora_targets(model: nn.Module) -> str | list[str]:
    """peft ``target_modules`` for ``model``: the bundled DiT's attention and MLP Linear layers (a regex),
    otherwise the names of every ``nn.Linear``."""
    from boss_fast.models.dit import DiT

    if isinstance(model, DiT):
        return _DIT_LORA_TARGETS
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def _matching_modules(model: nn.Module, targets: str | Sequence[str]) -> list[str]:
    """Names peft would adapt: a str is a full regex match, a list matches a name or a dotted suffix."""
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(targets, str):
        return [n for n in names if re.fullmatch(targets, n)]
    wanted = list(targets)
    return [n for n in names if any(n == w or n.endswith("." + w) for w in wanted)]


class _LoraHost(nn.Module):
    """Holds the network for peft: peft reads ``model.config`` as a dict, and the bundled DiT has a
    ``config()`` method, so peft wraps this host (config-free) and ``merge_lora`` unwraps it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t)


def _add_lora(model: nn.Module, rank: int, targets: str | Sequence[str] | None, alpha: float | None):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("lora_rank needs peft: pip install 'boss_fast[lora]'") from err
    targets = default_lora_targets(model) if targets is None else targets
    host = _LoraHost(model)
    matched = _matching_modules(host, targets)
    if not matched:
        linears = [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear)]
        raise ValueError(
            f"lora_targets {targets!r} match no module of {type(model).__name__}; its Linear layers are "
            f"{linears[:8]}{' ...' if len(linears) > 8 else ''}"
        )
    config = LoraConfig(
        r=rank,
        lora_alpha=float(rank if alpha is None else alpha),
        target_modules=targets if isinstance(targets, str) else list(targets),
        lora_dropout=0.0,
        bias="none",
    )
    return get_peft_model(host, config)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA adapters into the base weights (peft ``merge_and_unload``) and return the plain module,
    which computes the same velocities without the adapter overhead; a module without adapters is
    returned unchanged."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.model if isinstance(model, _LoraHost) else model


# ---------------------------------------------------------------------------------------------- training


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


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _module_placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _infer_shape(model: nn.Module) -> tuple[int, ...]:
    if all(hasattr(model, a) for a in ("in_channels", "input_size")):  # the bundled DiT
        return (int(model.in_channels), int(model.input_size), int(model.input_size))
    raise ValueError(f"cannot infer one sample's shape for {type(model).__name__}: pass shape=(C, H, W)")


def _check_output_shape(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        out = model(x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"model output {got} differs from its input {tuple(x.shape)}: a velocity model must return a "
            "tensor shaped like x"
        )


def _header(model_fp: str, sched: Schedule, config: dict) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_fingerprint": model_fp,
        "schedule": sched.to_dict(),
        "config": config,
    }


def _check_header(header: object, expected: dict, path: str) -> None:
    if not isinstance(header, dict) or header.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a boss_fast straightening checkpoint")
    if header.get("model_fingerprint") != expected["model_fingerprint"]:
        raise ValueError(
            f"{path} was written for model {header.get('model_fingerprint')!r}, not this model "
            f"({expected['model_fingerprint']!r}); use another checkpoint_dir"
        )
    if header.get("schedule") != expected["schedule"]:
        raise ValueError(f"{path} was written for a different schedule; use another checkpoint_dir")
    if header.get("config") != expected["config"]:
        diff = {
            k: (header["config"].get(k), v)
            for k, v in expected["config"].items()
            if header.get("config", {}).get(k) != v
        }
        raise ValueError(f"{path} was written with other settings (stored, requested): {diff}")


@dataclass(frozen=True)
class _Config:
    num_pairs: int
    grid: list
    solver: str
    iters: int
    batch_size: int
    lr: float
    warmup: int
    ema: float
    ema_warmup: bool
    lora_rank: int | None
    lora_targets: str | list | None
    loss: str
    normalize: bool
    seed: int
    world_size: int


def straighten(
    model: nn.Module,
    sched: Schedule,
    teacher: VelocityFn | None = None,
    num_pairs: int = 5000,
    grid: int | Sequence[float] | np.ndarray = 100,
    solver: str = "euler",
    iters: int = 2000,
    batch_size: int = 64,
    lr: float = 2e-4,
    warmup: int = 200,
    ema: float = 0.999,
    lora_rank: int | None = None,
    loss: str = "l2",
    checkpoint_dir: str | os.PathLike | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    *,
    normalize: bool = False,
    ema_warmup: bool = True,
    lora_targets: str | Sequence[str] | None = None,
    lora_alpha: float | None = None,
    merge: bool = True,
    shape: Sequence[int] | None = None,
    noise: torch.Tensor | None = None,
    checkpoint_every: int = 200,
    pair_batch_size: int = 500,
    cache_dir: str | os.PathLike | None = None,
    callback: Callable[[int, float], None] | None = None,
    return_stats: bool = False,
    teacher_mode: str | None = None,
) -> nn.Module | tuple[nn.Module, StraightenStats]:
    """BOSS stage 2: fine-tune ``model`` so that Euler steps on ``sched`` follow the teacher.

    Pairs: ``straightening_pairs(teacher, sched, seeded_noise(shape, 0, num_pairs, seed=seed))`` (or the given
    ``noise``). Each iteration draws ``batch_size`` rows uniformly over every (noise, interval) pair, with a
    generator seeded by ``seed``, and takes one Adam step on the mean per-sample loss (``pair_loss``) of
    ``v(x_k, tau_k)`` against ``(x_{k+1} - x_k) / (tau_{k+1} - tau_k)``; the learning rate rises linearly
    over ``warmup`` steps, gradients are clipped to norm 1.0, and an EMA of the trained weights (decay
    ``ema``, warmed up, see ``ema_warmup``; 0 keeps the last weights) is what is returned.

    Args:
        model: the ``nn.Module`` velocity network ``model(x, t)``; it is not modified (the student is a copy).
        sched: the ``Schedule`` to straighten for, chosen on ``grid`` with ``solver``.
        teacher: ``velocity(x, t)`` producing the pairs; default a frozen copy of ``model``.
        num_pairs: noises M (pairs = M * K).
        shape: one sample's shape for the noises; default the schedule's ``shape`` (where it was searched),
            else the bundled DiT's. A schedule from another model (its ``fingerprint``) is warned about.
        iters: optimiser steps (>= 1). batch_size: global batch (split across DDP ranks).
        lora_rank: train rank-r LoRA adapters (peft) on ``lora_targets`` (default ``default_lora_targets``)
            instead of every weight; ``merge`` folds them into the returned module.
        loss: "l2" or "pseudo_huber"; normalize: Simple ReFlow's 1/stopgrad(loss) weighting.
        ema_warmup: use the decay ``min(ema, (1 + n) / (10 + n))`` at step n (diffusers' ``EMAModel``
            warm-up). Without it the teacher's initial weights keep ``ema ** iters`` of the average: 13.5% for
            0.999 and 2000 steps, which on the digits DiT cost FD 61 instead of ~40 at K = 2 (measured).
        checkpoint_dir: if set, ``straighten.pt`` there is written atomically every ``checkpoint_every``
            steps and at the end (student, EMA, optimiser, step, RNG states, and a header with the schedule,
            the model's fingerprint and the settings); a run finding one resumes from it, and refuses one
            from another model, schedule or settings. Resuming is bit-identical to an uninterrupted run.
        cache_dir: pair cache (see ``straightening_pairs``).
        teacher_mode: how the teacher generates the pairs (``straightening_pairs``' ``mode``), e.g.
            "cuda_graph" on a GPU.
        device: where to train; default the model's device.
        callback: ``callback(step, loss)`` after each step (step counts from 1), e.g. for logging.

    Returns:
        The straightened module in eval mode with gradients off, called like ``model`` (with
        ``return_stats``: also a ``StraightenStats``).

    Under torch.distributed (one process per rank, e.g. torchrun), the student is wrapped in DDP, each rank
    takes its slice of the same global batch and pairs are generated once across ranks; rank 0 writes the
    checkpoints. ``batch_size`` must be divisible by the world size.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module to fine-tune, got {type(model).__name__}")
    solver = check_teacher(solver, teacher_mode, "teacher_mode")
    sched = _check_schedule(sched, grid, solver)
    iters = check_int(iters, "iters")
    num_pairs = check_int(num_pairs, "num_pairs")
    batch_size = check_int(batch_size, "batch_size")
    warmup = check_int(warmup, "warmup", minimum=0)
    checkpoint_every = check_int(checkpoint_every, "checkpoint_every")
    seed = check_int(seed, "seed", minimum=0)
    lr = check_float(lr, "lr")
    ema = check_float(ema, "ema")
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"ema must be in [0, 1), got {ema}")
    loss = check_choice(loss, LOSSES, "loss")
    if lora_rank is not None:
        lora_rank = check_int(lora_rank, "lora_rank")
    rank, world = _dist_rank_world()
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be divisible by the world size {world}")

    model_device, dtype = _module_placement(model)
    device = torch.device(device) if device is not None else model_device
    if noise is None:
        shape = tuple(shape) if shape is not None else (sched.shape or _infer_shape(model))
        noise = seeded_noise(shape, 0, num_pairs, seed=seed, dtype=dtype)
    noise = check_noise(noise).to(dtype=dtype)
    num_pairs = noise.shape[0]

    student = copy.deepcopy(model).to(device)
    _check_output_shape(student, noise[:2].to(device))
    if teacher is None:
        teacher = copy.deepcopy(model).to(device).eval().requires_grad_(False)
    model_fp = model_fingerprint(model)
    if sched.fingerprint is not None and sched.fingerprint != model_fp:
        warnings.warn(
            f"the schedule was searched on another model (fingerprint {sched.fingerprint}, this model's is "
            f"{model_fp}): its steps may not suit this one",
            UserWarning,
            stacklevel=2,
        )
    if lora_rank is not None:
        student.requires_grad_(False)
        student = _add_lora(student, lora_rank, lora_targets, lora_alpha)
    else:
        student.requires_grad_(True)
    student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())

    pairs = straightening_pairs(
        teacher,
        sched,
        noise,
        grid=sched.grid,
        solver=solver,
        batch_size=pair_batch_size,
        cache_dir=cache_dir,
        device=device,
        progress=progress,
        mode=teacher_mode,
    )
    target = (pairs.end - pairs.start) / (pairs.t_end - pairs.t_start).view(-1, *[1] * (noise.ndim - 1))

    config = asdict(
        _Config(
            num_pairs=num_pairs,
            grid=sched.grid.tolist(),
            solver=solver,
            iters=iters,
            batch_size=batch_size,
            lr=lr,
            warmup=warmup,
            ema=ema,
            ema_warmup=bool(ema_warmup),
            lora_rank=lora_rank,
            lora_targets=lora_targets if isinstance(lora_targets, str | None) else list(lora_targets),
            loss=loss,
            normalize=bool(normalize),
            seed=seed,
            world_size=world,
        )
    )
    config.pop("iters")  # a run may be extended: resuming with more iterations is allowed
    header = _header(model_fp, sched, config)

    optimizer = torch.optim.Adam(params, lr=lr)
    averaged = [p.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(seed)
    step = 0
    losses: list[float] = []
    path = os.path.join(os.fspath(checkpoint_dir), CHECKPOINT_NAME) if checkpoint_dir is not None else None
    if path is not None and os.path.exists(path):
        try:
            state = torch.load(path, map_location=device, weights_only=True)
            saved_header = json.loads(state["header"])
        except (RuntimeError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as err:
            raise ValueError(
                f"straighten checkpoint {path} is unreadable (corrupted or not a checkpoint: {err}); "
                "delete it or use another checkpoint_dir"
            ) from None
        _check_header(saved_header, header, path)
        with torch.no_grad():
            for p, saved in zip(params, state["params"], strict=True):
                p.copy_(saved)
            for a, saved in zip(averaged, state["ema"], strict=True):
                a.copy_(saved)
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step = int(state["step"])
        losses = [float(v) for v in state["losses"].tolist()]

    trainer = student
    if world > 1:
        trainer = nn.parallel.DistributedDataParallel(student, broadcast_buffers=False)
    local = batch_size // world
    bar = tqdm(total=iters, initial=min(step, iters), desc="straighten", disable=not progress or rank != 0)
    with torch.enable_grad():  # callers may hold no_grad (the demo does)
        while step < iters:
            # Same global draw on every rank (the generator is replicated); rank r trains on its slice.
            rows = torch.randint(0, target.shape[0], (batch_size,), generator=generator)
            rows = rows[rank * local : (rank + 1) * local].to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warmup) if warmup else lr
            pred = trainer(pairs.start[rows], pairs.t_start[rows])
            per = pair_loss(pred, target[rows], loss, normalize=normalize)
            # sum / global batch, times world: DDP averages the ranks' gradients, giving the global mean.
            value = per.sum() * (world / batch_size)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            decay = min(ema, (1.0 + step) / (10.0 + step)) if ema_warmup else ema
            with torch.no_grad():
                torch._foreach_lerp_(averaged, [p.detach() for p in params], 1.0 - decay)
            step += 1
            detached = value.detach().clone()
            if world > 1:  # the global batch's mean loss on every rank (one small all-reduce per step)
                torch.distributed.all_reduce(detached)
            reported = float(detached) / world
            losses.append(reported)
            bar.update(1)
            if callback is not None:
                callback(step, reported)
            if path is not None and rank == 0 and (step % checkpoint_every == 0 or step == iters):
                _save_checkpoint(path, header, params, averaged, optimizer, generator, step, losses)
    bar.close()

    with torch.no_grad():
        for p, a in zip(params, averaged, strict=True):
            p.copy_(a)
    result = merge_lora(student) if (lora_rank is not None and merge) else student
    result.eval().requires_grad_(False)
    if not return_stats:
        return result
    stats = StraightenStats(
        trained_params=sum(p.numel() for p in params),
        total_params=total,
        steps=step,
        losses=tuple(losses),
    )
    return result, stats


def _save_checkpoint(path, header, params, averaged, optimizer, generator, step, losses) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state = {
        "header": json.dumps(header),
        "params": [p.detach().cpu() for p in params],
        "ema": [a.cpu() for a in averaged],
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "step": step,
        "losses": torch.tensor(losses, dtype=torch.float64),
    }
    atomic_write(path, lambda f: torch.save(state, f))
