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

import contextlib
import copy
import functools
import json
import math
import os
import pickle
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal, NamedTuple, overload

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn
from tqdm.auto import tqdm

from boss_fast._checkpoint import CHECKSUM_KEY
from boss_fast._header import check_header, header_strings, make_header, write_file
from boss_fast._identity import cache_key, model_fingerprint, noise_digest, value_digest
from boss_fast._runtime import module_placement, rank_world
from boss_fast._validation import (
    AUTOCAST_DTYPES,
    SOLVERS,
    check_choice,
    check_float,
    check_int,
    check_noise,
    check_seed,
    check_teacher,
)
from boss_fast.engine import WIDE_MODES, Shard, progress_bar
from boss_fast.grids import resolve_grid
from boss_fast.ode import VelocityFn, for_rows, start_state
from boss_fast.schedule import Schedule
from boss_fast.trajectories import TeacherRunner, seeded_noise

__all__ = [
    "LOSSES",
    "StraighteningPairs",
    "StraightenMemory",
    "StraightenStats",
    "add_lora",
    "default_lora_targets",
    "merge_lora",
    "pair_grid",
    "pair_loss",
    "StraightenSettings",
    "straighten",
    "straightening_pairs",
]

LOSSES: tuple[str, ...] = ("l2", "pseudo_huber")
CHECKPOINT_FORMAT = "boss_fast.straighten"
CHECKPOINT_VERSION = 2  # 2: the wider model fingerprint, checkpoint_key, checksums and run identity
CHECKPOINT_NAME = "straighten.pt"
# Song & Dhariwal (2023) use c = 0.00054 * sqrt(d) for images in [-1, 1]; the digits are in [-1, 1] too.
PSEUDO_HUBER_C = 0.00054
# The learning rates StraightenSettings takes when lr is not given. Full fine-tuning: the published 2e-4.
FULL_LR = 2e-4
# LoRA: B starts at zero and the adapters need a larger step. On the digits DiT (rank 4, 600 iterations,
# K = 2; benchmarks/results/straighten_sweep_lora.md) FD was 88.4 / 70.0 / 65.6 at lr 1e-3 / 3e-3 / 1e-2 on
# attention and MLP, and 44.9 at 3e-3 with the modulation and the head adapted too (full fine-tune: 42.3).
LORA_LR = 3e-3
# LoRA's alpha when not given, per unit of rank (scale alpha / rank). Under Adam a larger alpha acts much like
# a larger lr (alpha 4r at lr 1e-3: FD 74.7, between lr 3e-3 and 1e-2 at alpha r), so it stays at 1.
LORA_ALPHA_PER_RANK = 1.0


# ----------------------------------------------------------------------------------------------- pairs


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


def _check_schedule(sched: object, grid: int | Sequence[float] | np.ndarray, solver: str | None) -> Schedule:
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


def pair_grid(sched: Schedule, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``steps``-step teacher grid through the schedule's times, and where they lie on it.

    The segments between ``sched.grid[0]`` and the schedule's times (the first segment is empty when the
    schedule starts at the grid's first point) share the steps in proportion to their lengths, at least one
    each (largest remainders, so they add up to ``steps``), each cut uniformly. With ``steps`` equal to the
    schedule's grid size on a uniform grid whose points hold the times, this is that grid.

    Returns:
        ``(times, indices)``: (steps + 1,) float64 increasing teacher times and (K + 1,) int64 indices with
        ``times[indices] == sched.times``.

    Example:
        >>> sched = Schedule(np.array([0.0, 0.25, 1.0]), np.array([0, 1, 4]), 0.0, np.linspace(0, 1, 5))
        >>> times, indices = pair_grid(sched, 8)
        >>> times.tolist(), indices.tolist()
        ([0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0], [0, 2, 8])
    """
    bounds = np.concatenate([[sched.grid[0]], sched.times]) if sched.times[0] > sched.grid[0] else sched.times
    segments = len(bounds) - 1
    steps = check_int(steps, "pair_steps", minimum=segments)
    lengths = np.diff(bounds)
    share = steps * lengths / lengths.sum()
    counts = np.maximum(1, np.floor(share).astype(np.int64))
    while counts.sum() != steps:  # at most `segments` rounds: hand out (or take back) one step at a time
        if counts.sum() < steps:
            counts[np.argmax(share - counts)] += 1
        else:
            counts[np.argmax(np.where(counts > 1, counts - share, -np.inf))] -= 1
    pieces = [np.linspace(a, b, n + 1)[:-1] for a, b, n in zip(bounds[:-1], bounds[1:], counts, strict=True)]
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
    pair_steps: int | None = None,
    pair_solver: str | None = None,
) -> StraighteningPairs:
    """The (x at tau_k, x at tau_{k+1}, tau_k, tau_{k+1}) pairs of the teacher's fine trajectory.

    Runs ``teacher_trajectory`` on ``sched.grid`` for the noises in batches of ``batch_size`` (memory: one
    batch's (N, B, ...) trajectory plus the (M, K + 1, ...) kept states) and keeps the states at
    ``sched.indices``; with an Euler teacher they equal a direct teacher run bit for bit. The teacher always
    runs from the noise at ``grid[0]`` (the search's targets are its states); the first interval's input is
    the schedule's start state at tau_0 (``Schedule.start``: the noise itself for "zero" and "noise",
    ``(1 - tau_0) * noise`` for "scaled"), so a schedule that starts later is straightened from where its
    sampler starts, onto the teacher's trajectory. ``pair_steps`` and ``pair_solver`` trade the pairs'
    accuracy for the teacher's cost (M x steps x the solver's evaluations per step: 1 Euler, 2 Heun, 4 RK4).

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
        pair_steps: an int >= K runs the teacher on :func:`pair_grid` instead of ``sched.grid``.
        pair_solver: "euler", "heun", "rk4" or "dopri5" instead of ``solver`` (a deliberate other teacher).

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
    sched = _check_schedule(sched, grid, solver)
    solver = check_teacher(sched.solver if solver is None else solver, mode)
    path, solver = _teacher_path(sched, solver, mode, pair_steps, pair_solver)
    noise = check_noise(noise)
    batch_size = check_int(batch_size, "batch_size")
    device = torch.device(device) if device is not None else noise.device
    if cache_dir is not None and not isinstance(teacher, nn.Module):
        raise TypeError(
            "cache_dir needs the teacher as an nn.Module: its weights' fingerprint keys the cache, and a "
            f"plain {type(teacher).__name__} cannot be told apart from another"
        )
    folder = None
    if cache_dir is not None:
        folder = os.path.join(os.fspath(cache_dir), _cache_key(teacher, path, noise, solver, batch_size))
        os.makedirs(folder, exist_ok=True)
    runner = TeacherRunner(teacher, path[0], solver, mode, record="states")
    states = _shard_states(runner, noise, path[1], batch_size, device, folder, progress)
    # The first interval starts where the sampler does: the rule's state at tau_0, not the teacher's (which
    # ran from the noise at grid[0], and whose states stay every target). For "zero" both are the noise.
    first = noise.to(device=states.device, dtype=states.dtype)
    states[:, 0] = start_state(first, sched.start, float(sched.times[0]))
    return _flatten_pairs(states, sched.times)


def _teacher_path(
    sched: Schedule, solver: str, mode: str | None, pair_steps: object, pair_solver: object
) -> tuple[tuple[np.ndarray, np.ndarray], str]:
    """((teacher grid, kept indices), teacher solver) of the pairs: the schedule's own grid and ``solver``,
    or :func:`pair_grid` with ``pair_steps`` and ``pair_solver`` where they are set."""
    path = (sched.grid, sched.indices) if pair_steps is None else pair_grid(sched, pair_steps)
    if pair_solver is not None:
        solver = check_teacher(check_choice(pair_solver, SOLVERS, "pair_solver"), mode)
    return path, solver


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
    """peft ``target_modules`` for ``model``: the model's own ``lora_targets`` attribute when it has one (a
    regex or a list of names; the bundled DiT names its attention and MLP Linear layers), otherwise the
    names of every ``nn.Linear``."""
    targets = getattr(model, "lora_targets", None)
    if targets is not None:
        return targets if isinstance(targets, str) else list(targets)
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

    @property
    def for_rows(self) -> Callable[[torch.Tensor], VelocityFn]:
        """The held network's bank (:func:`boss_fast.ode.for_rows`); AttributeError when it has none, so a
        plain network stays plain through peft's attribute forwarding."""
        pick = getattr(self.model, "for_rows", None)
        if pick is None:
            raise AttributeError(f"{type(self.model).__name__} holds no bank of conditionings")
        return pick


def add_lora(
    model: nn.Module,
    rank: int,
    targets: str | Sequence[str] | None = None,
    alpha: float | None = None,
    seed: int | None = None,
) -> nn.Module:
    """Wrap ``model`` with rank-``rank`` LoRA adapters (peft) on ``targets`` (default
    :func:`default_lora_targets`), scale ``alpha / rank`` (alpha defaults to rank); undo with
    :func:`merge_lora`. Raises ValueError when the targets match no module.

    ``seed``: the adapters' initial values are drawn from a generator of their own seeded with it
    (:func:`_seed_adapters`), and torch's global generator is left as it was; None: peft draws them from the
    global generator (another value on every call).
    """
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
    if seed is None:
        return get_peft_model(host, config)
    with torch.random.fork_rng(devices=[]):  # peft's own draws (on the host) leave the caller's generator
        wrapped = get_peft_model(host, config)
    _seed_adapters(wrapped, seed)
    return wrapped


def _seed_adapters(model: nn.Module, seed: int) -> None:
    """Redraw every adapter's random initial values as peft draws them (``lora_A`` kaiming-uniform with
    a = sqrt(5), an embedding's ``lora_embedding_B`` standard normal; the other halves stay zero) from one
    generator seeded with ``seed``, in parameter order, on the host (the same values on every device)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_A." not in name and ".lora_embedding_B." not in name:
                continue
            host = torch.empty(param.shape, dtype=param.dtype)
            if ".lora_A." in name:
                nn.init.kaiming_uniform_(host, a=math.sqrt(5), generator=generator)
            else:
                nn.init.normal_(host, generator=generator)
            param.copy_(host)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA adapters into the base weights (peft ``merge_and_unload``) and return the plain module,
    which computes the same velocities without the adapter overhead; a module without adapters is
    returned unchanged.

    Example:
        >>> net = torch.nn.Linear(2, 2)
        >>> merge_lora(net) is net  # no adapters: unchanged
        True
    """
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


@dataclass(frozen=True)
class StraightenMemory:
    """How a straightening run holds a large model (``straighten(..., memory=StraightenMemory(...))``).

    Whatever these are, the teacher of the pairs is the student's base before any training (the pairs are
    made before the first step, and with LoRA before the adapters exist), so no frozen copy is kept.

    Attributes:
        in_place: train ``model`` itself instead of a copy: LoRA adapters are added to it (``merge`` then
            folds them into its weights) and full fine-tuning updates its weights; it is the returned
            module's base afterwards. Default False: the student is one copy of ``model``.
        gradient_checkpointing: recompute each block's activations in the backward pass instead of keeping
            them: diffusers models through their ``enable_gradient_checkpointing()``, other modules by
            checkpointing every item of their outermost ``nn.ModuleList``s (the transformer blocks); a
            module with neither is refused. Switched off again when training ends.
        autocast: None, ``torch.bfloat16`` or ``torch.float16``: the student's forward pass in training runs
            under ``torch.autocast`` in that dtype (CPU and CUDA); weights, gradients, Adam, EMA and the
            pairs stay in the model's dtype. Stored in checkpoints: a run resumes only with the same value.

    Example:
        >>> StraightenMemory(gradient_checkpointing=True, autocast=torch.bfloat16).in_place
        False
    """

    in_place: bool = False
    gradient_checkpointing: bool = False
    autocast: torch.dtype | None = None

    def __post_init__(self) -> None:
        for name in ("in_place", "gradient_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"StraightenMemory.{name} must be a bool, got {getattr(self, name)!r}")
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(
                "StraightenMemory.autocast must be None, torch.bfloat16 or torch.float16, got "
                f"{self.autocast!r}"
            )


@dataclass(frozen=True)
class StraightenSettings:
    """Every training knob of a straightening run, checked at construction (frozen; shared by the Python API,
    ``boss-fast straighten`` and the demo). ``straighten(model, sched, settings=...)``; None: these defaults.

    Attributes:
        num_pairs: noises M (pairs = M * K), drawn by ``seeded_noise(shape, 0, M, seed=seed)``.
        grid: the teacher's grid, an int n (``uniform_grid(n)``) or explicit times (stored as a tuple); must
            equal the schedule's own grid (``sched.grid``), else ``straighten`` refuses the schedule.
        solver: the teacher's solver; None takes ``sched.solver``, anything else must equal it.
        teacher_mode: the pair teacher's mode (``straightening_pairs``'s ``mode``): None, "auto", "eager",
            "compile" or "cuda_graph".
        pair_batch_size: noises per teacher batch and per pair-cache shard.
        pair_steps: None: the teacher runs on the schedule's grid (``grid``); an int >= K: on
            :func:`pair_grid`, that many steps through the schedule's times (fewer steps, cheaper pairs).
        pair_solver: None: the teacher runs ``solver``; "euler", "heun", "rk4" or "dopri5": that one instead.
        iters: optimiser steps (>= 1). batch_size: the global batch (split across DDP ranks).
        lr: Adam's learning rate (> 0), reached linearly over ``warmup`` steps (0: from the first). None (the
            default) takes the measured default of the run's kind at construction: ``FULL_LR`` (2e-4) without
            ``lora_rank``, ``LORA_LR`` with it; a given value is kept.
        ema: the decay of the returned weights' EMA, in [0, 1) (0 keeps the last weights).
        ema_warmup: decay ``min(ema, (1 + n) / (10 + n))`` at step n (diffusers' ``EMAModel`` warm-up).
            Without it the teacher's weights keep ``ema ** iters`` of the average: 13.5% for 0.999 and 2000
            steps, which on the digits DiT cost FD 61 instead of ~40 at K = 2 (measured).
        loss: "l2" or "pseudo_huber"; normalize: Simple ReFlow's 1/stopgrad(loss) weighting.
        seed: the pairs' noise, the batch-drawing generator and the LoRA adapters' initial values (torch's
            global generator is neither read nor changed), in [0, 2^64 - 1] (a torch.Generator seed).
        checkpoint_every: steps between checkpoints.
        lora_rank: train rank-r LoRA adapters (peft) instead of every weight; None: full fine-tuning.
        lora_targets: the adapted modules (a regex or names, stored as a tuple); None:
            :func:`default_lora_targets` (the model's ``lora_targets``, else every ``nn.Linear``).
        lora_alpha: the LoRA scale's numerator (> 0); None with ``lora_rank`` set takes
            ``LORA_ALPHA_PER_RANK * lora_rank`` at construction; a given value is kept.
        merge: fold the adapters into the returned module (False: the peft model).
        memory: :class:`StraightenMemory` (in place, gradient checkpointing, autocast).

    The defaults resolved at construction (``lr``, ``lora_alpha``) are then ordinary values: they are what
    checkpoints record, and ``dataclasses.replace(settings, lora_rank=None)`` keeps them (build new settings
    to get the other kind's defaults).

    Raises:
        TypeError, ValueError: naming the field (``StraightenSettings.<field>``) of a bad value.

    Example:
        >>> StraightenSettings().lr  # full fine-tuning
        0.0002
        >>> settings = StraightenSettings(iters=500, lora_rank=4, lora_targets=["qkv", "proj"])
        >>> settings.lora_targets, settings.lr == LORA_LR, settings.lora_alpha == LORA_ALPHA_PER_RANK * 4
        (('qkv', 'proj'), True, True)
        >>> StraightenSettings(lora_rank=4, lr=5e-4, lora_alpha=2.0).lr  # given values are kept
        0.0005
        >>> StraightenSettings(ema=1.0)
        Traceback (most recent call last):
        ...
        ValueError: StraightenSettings.ema must be in [0, 1), got 1.0
    """

    num_pairs: int = 5000
    grid: int | tuple[float, ...] = 100
    solver: str | None = None
    teacher_mode: str | None = None
    pair_batch_size: int = 500
    iters: int = 2000
    batch_size: int = 64
    lr: float | None = None
    warmup: int = 200
    ema: float = 0.999
    ema_warmup: bool = True
    loss: str = "l2"
    normalize: bool = False
    seed: int = 0
    checkpoint_every: int = 200
    lora_rank: int | None = None
    lora_targets: str | tuple[str, ...] | None = None
    lora_alpha: float | None = None
    merge: bool = True
    memory: StraightenMemory = StraightenMemory()
    pair_steps: int | None = None
    pair_solver: str | None = None

    def __post_init__(self) -> None:
        def name(field_name: str) -> str:
            return f"StraightenSettings.{field_name}"

        def put(field_name: str, value: object) -> None:  # frozen: the checked, normalised value
            object.__setattr__(self, field_name, value)

        for f in ("num_pairs", "pair_batch_size", "iters", "batch_size", "checkpoint_every"):
            put(f, check_int(getattr(self, f), name(f)))
        put("warmup", check_int(self.warmup, name("warmup"), minimum=0))
        put("seed", check_seed(self.seed, name("seed")))
        for f in ("ema_warmup", "normalize", "merge"):
            if not isinstance(getattr(self, f), bool):
                raise TypeError(f"{name(f)} must be a bool, got {getattr(self, f)!r}")
        put("grid", _settings_grid(self.grid, name("grid")))
        if self.teacher_mode is not None:
            check_choice(self.teacher_mode, WIDE_MODES, name("teacher_mode"))
        if self.solver is not None:
            check_choice(self.solver, SOLVERS, name("solver"))
            check_teacher(self.solver, self.teacher_mode, name("teacher_mode"))
        if self.lr is None:  # the measured default of the mode (see the class docstring)
            put("lr", LORA_LR if self.lora_rank is not None else FULL_LR)
        put("lr", check_float(self.lr, name("lr")))
        if self.lr <= 0:
            raise ValueError(f"{name('lr')} must be > 0, got {self.lr}")
        put("ema", check_float(self.ema, name("ema")))
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"{name('ema')} must be in [0, 1), got {self.ema}")
        check_choice(self.loss, LOSSES, name("loss"))
        self._check_lora(name, put)
        self._check_pairs(name, put)
        if not isinstance(self.memory, StraightenMemory):
            raise TypeError(f"{name('memory')} must be a StraightenMemory, got {type(self.memory).__name__}")

    def _check_pairs(self, name: Callable[[str], str], put: Callable[[str, object], None]) -> None:
        if self.pair_steps is not None:
            put("pair_steps", check_int(self.pair_steps, name("pair_steps")))
        if self.pair_solver is not None:
            check_choice(self.pair_solver, SOLVERS, name("pair_solver"))
            check_teacher(self.pair_solver, self.teacher_mode, name("teacher_mode"))

    def _check_lora(self, name: Callable[[str], str], put: Callable[[str, object], None]) -> None:
        if self.lora_rank is not None:
            put("lora_rank", check_int(self.lora_rank, name("lora_rank")))
            if self.lora_alpha is None:  # the measured default scale (see the class docstring)
                put("lora_alpha", LORA_ALPHA_PER_RANK * self.lora_rank)
        if self.lora_alpha is not None:
            put("lora_alpha", check_float(self.lora_alpha, name("lora_alpha")))
            if self.lora_alpha <= 0:
                raise ValueError(f"{name('lora_alpha')} must be > 0, got {self.lora_alpha}")
        targets = self.lora_targets
        if isinstance(targets, str):
            try:  # peft matches a string target with re.fullmatch: compile it now, not after the teacher ran
                re.compile(targets)
            except re.error as err:
                raise ValueError(
                    f"{name('lora_targets')} {targets!r} is not a regular expression ({err}); give a regex "
                    "matched against module names, or a sequence of module names"
                ) from None
        elif targets is not None:
            names = list(targets) if isinstance(targets, Sequence) else []
            if not names or not all(isinstance(t, str) for t in names):
                raise TypeError(
                    f"{name('lora_targets')} must be a regex, a non-empty sequence of module names or None, "
                    f"got {targets!r}"
                )
            put("lora_targets", tuple(targets))


def _settings_grid(grid: object, name: str) -> int | tuple[float, ...]:
    """An int n (>= 1: ``uniform_grid(n)``) stays n; explicit times (validated by ``resolve_grid``) become a
    tuple of floats."""
    if isinstance(grid, int | np.integer) and not isinstance(grid, bool | np.bool_):
        return check_int(grid, name)
    return tuple(resolve_grid(grid, name).tolist())


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
class _Config:
    """The settings a checkpoint must share with the run resuming it (stored in its header)."""

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
        """The checkpoint header's settings (the keys and values of checkpoint version 2, unchanged)."""
        s = self.settings
        targets = s.lora_targets if isinstance(s.lora_targets, str | None) else list(s.lora_targets)
        config = asdict(
            _Config(
                num_pairs=num_pairs,
                grid=self.sched.grid.tolist(),
                solver=self.solver,
                iters=s.iters,
                batch_size=s.batch_size,
                lr=s.lr,
                warmup=s.warmup,
                ema=s.ema,
                ema_warmup=s.ema_warmup,
                lora_rank=s.lora_rank,
                lora_targets=targets,
                loss=s.loss,
                normalize=s.normalize,
                seed=s.seed,
                world_size=world,
            )
        )
        config.pop("iters")  # a run may be extended: resuming with more iterations is allowed
        if s.memory.autocast is not None:  # only when set: checkpoints from before the option still fit
            config["autocast"] = str(s.memory.autocast)
        for key in ("pair_steps", "pair_solver"):  # likewise: only when set
            if getattr(s, key) is not None:
                config[key] = getattr(s, key)
        if s.lora_alpha is not None and s.lora_alpha != s.lora_rank:  # before: alpha was the rank, unstored
            config["lora_alpha"] = s.lora_alpha
        return config


def _resolve_run(model: object, sched: object, settings: object, device: torch.device | str | None) -> _Run:
    """Check ``straighten``'s model, schedule and settings together, in one place."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module to fine-tune, got {type(model).__name__}")
    settings = StraightenSettings() if settings is None else settings
    if not isinstance(settings, StraightenSettings):
        raise TypeError(f"settings must be a StraightenSettings or None, got {type(settings).__name__}")
    sched = _check_schedule(sched, settings.grid, settings.solver)
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


def _velocity_targets(pairs: StraighteningPairs) -> torch.Tensor:
    """(x_{k+1} - x_k) / (tau_{k+1} - tau_k) per pair: the velocity one Euler step must have."""
    dt = (pairs.t_end - pairs.t_start).view(-1, *[1] * (pairs.start.ndim - 1))
    return (pairs.end - pairs.start) / dt


# ------------------------------------------------------------------------------ train state, checkpoint


def _identity(teacher: VelocityFn) -> str:
    """A teacher's identity in a checkpoint header: its fingerprint when it is a module, else ""."""
    return model_fingerprint(teacher) if isinstance(teacher, nn.Module) else ""


def _header(model_fp: str, sched: Schedule, config: dict, teacher_id: str, noise: torch.Tensor) -> dict:
    return make_header(
        CHECKPOINT_FORMAT,
        CHECKPOINT_VERSION,
        model_fingerprint=model_fp,
        schedule=sched.to_dict(),
        config=config,
        teacher=teacher_id,
        noise=noise_digest(noise),
    )


def _payload_sha256(state: dict) -> str:
    """SHA-256 of everything a straightening checkpoint holds beside its header."""
    return value_digest({key: value for key, value in state.items() if key != "header"})


def _check_header(header: object, expected: dict, path: str) -> None:
    """Refuse a checkpoint of another format, version or run (``_header.check_header``), naming the model,
    the schedule or the settings that differ."""
    check_header(
        header,
        expected,
        path,
        "straightening checkpoint",
        remedy="use another checkpoint_dir",
        explain=lambda key: _mismatch(header, expected, path, key),
    )


def _mismatch(header: dict, expected: dict, path: str, key: str) -> str:
    if key == "model_fingerprint":
        return (
            f"{path} was written for model {header.get('model_fingerprint')!r}, not this model "
            f"({expected['model_fingerprint']!r}); use another checkpoint_dir"
        )
    if key == "schedule":
        return f"{path} was written for a different schedule; use another checkpoint_dir"
    if key == "config":
        stored_config = header.get("config") or {}
        diff = {
            k: (stored_config.get(k), v) for k, v in expected["config"].items() if stored_config.get(k) != v
        }
        return f"{path} was written with other settings (stored, requested): {diff}"
    return f"{path} has another {key} ({header.get(key)!r}); use another checkpoint_dir"


def _check_not_past(step: int, iters: int, path: str) -> None:
    """Refuse a checkpoint whose run went past ``iters``: its weights are step ``step``'s, and the step
    ``iters`` state is not kept. A run at or before ``iters`` resumes (training does not depend on ``iters``,
    so a run extended from a shorter one equals a run of ``iters`` from the start)."""
    if step > iters:
        raise ValueError(
            f"straightening checkpoint {path} holds a run at step {step}, past iters = {iters}: its weights "
            f"are not a {iters}-step run's; ask for iters >= {step} to go on from it, or use another "
            "checkpoint_dir"
        )


@dataclass
class _TrainState:
    """What a step changes and a checkpoint keeps: the trained parameters, their EMA, the optimiser, the
    pair-drawing generator, the step count and the losses so far."""

    params: list[torch.Tensor]
    averaged: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0
    losses: list[float] = field(default_factory=list)

    @classmethod
    def start(cls, params: list[torch.Tensor], lr: float, seed: int) -> _TrainState:
        averaged = [p.detach().clone() for p in params]
        return cls(params, averaged, torch.optim.Adam(params, lr=lr), torch.Generator().manual_seed(seed))

    def update_ema(self, decay: float) -> None:
        with torch.no_grad():
            torch._foreach_lerp_(self.averaged, [p.detach() for p in self.params], 1.0 - decay)

    def use_ema(self) -> None:
        """Copy the EMA into the trained parameters (what the run returns)."""
        with torch.no_grad():
            for p, a in zip(self.params, self.averaged, strict=True):
                p.copy_(a)

    def save(self, path: str, header: dict) -> None:
        state = {
            "header": json.dumps(header),
            "params": [p.detach().cpu() for p in self.params],
            "ema": [a.cpu() for a in self.averaged],
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step,
            "losses": torch.tensor(self.losses, dtype=torch.float64),
        }
        state["header"] = json.dumps({**header, "sha256": _payload_sha256(state)})
        write_file(path, lambda f: torch.save(state, f))

    def resume(self, path: str, header: dict, device: torch.device) -> None:
        """Load a checkpoint written by ``save`` after checking that it belongs to this run."""
        try:
            state = torch.load(path, map_location=device, weights_only=True)
            saved_header = json.loads(state["header"])
        except (
            OSError,
            RuntimeError,
            EOFError,
            KeyError,
            TypeError,
            ValueError,
            pickle.UnpicklingError,
        ) as err:
            raise ValueError(
                f"straighten checkpoint {path} is unreadable (corrupted or not a checkpoint: {err}); "
                "delete it or use another checkpoint_dir"
            ) from None
        _check_header(saved_header, header, path)
        if saved_header.get("sha256") != _payload_sha256(state):
            raise ValueError(
                f"straighten checkpoint {path} fails its checksum (sha256 of its parameters, EMA, optimiser, "
                "generator, step and losses): the file is corrupt; delete it or use another checkpoint_dir"
            )
        with torch.no_grad():
            for p, saved in zip(self.params, state["params"], strict=True):
                p.copy_(saved)
            for a, saved in zip(self.averaged, state["ema"], strict=True):
                a.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self.losses = [float(v) for v in state["losses"].tolist()]


# ---------------------------------------------------------------------------------------------- training


def _autocast(run: _Run) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in ``memory.autocast`` on run.device, or nothing (the default's exact bits)."""
    autocast = run.settings.memory.autocast
    if autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(run.device.type, dtype=autocast)


def _train_step(
    state: _TrainState, trainer: nn.Module, pairs: StraighteningPairs, target: torch.Tensor, run: _Run
) -> float:
    """One optimiser step on a uniformly drawn batch of pairs; returns the global batch's mean loss."""
    s = run.settings
    rank, world = rank_world()
    local = s.batch_size // world
    # Same global draw on every rank (the generator is replicated); rank r trains on its slice.
    rows = torch.randint(0, target.shape[0], (s.batch_size,), generator=state.generator)
    rows = rows[rank * local : (rank + 1) * local].to(run.device)
    for group in state.optimizer.param_groups:
        group["lr"] = s.lr * min(1.0, (state.step + 1) / s.warmup) if s.warmup else s.lr
    inputs = (
        (pairs.start[rows], pairs.t_start[rows], rows)
        if run.banked
        else (pairs.start[rows], pairs.t_start[rows])
    )
    with _autocast(run):
        pred = trainer(*inputs)
    per = pair_loss(pred.to(target.dtype), target[rows], s.loss, normalize=s.normalize)
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


def _train(state, student, pairs, target, run: _Run, checkpoint: tuple | None, callback, progress) -> None:
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
            reported = _train_step(state, trainer, pairs, target, run)
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
    student = _student_base(model, run, noise)
    pairs = straightening_pairs(
        student if teacher is None else teacher, run.sched, noise, grid=run.sched.grid, solver=run.solver,
        batch_size=s.pair_batch_size, cache_dir=cache_dir, device=run.device, progress=progress,
        mode=s.teacher_mode, pair_steps=s.pair_steps, pair_solver=s.pair_solver,
    )  # fmt: skip
    teacher_id = model_fp if teacher is None else _identity(teacher)
    student, params = _trainable(student, run)
    _warn_other_model(run.sched, model_fp)
    header = _header(model_fp, run.sched, run.config(noise.shape[0], rank_world()[1]), teacher_id, noise)
    state = _TrainState.start(params, s.lr, s.seed)
    path = os.path.join(os.fspath(checkpoint_dir), CHECKPOINT_NAME) if checkpoint_dir is not None else None
    if path is not None and os.path.exists(path):
        state.resume(path, header, run.device)
        _check_not_past(state.step, s.iters, path)
    checkpoint = None if path is None else (path, header)
    _train(state, student, pairs, _velocity_targets(pairs), run, checkpoint, callback, progress)
    state.use_ema()
    result = merge_lora(student) if (s.lora_rank is not None and s.merge) else student
    result.eval().requires_grad_(False)
    return result, StraightenStats(sum(p.numel() for p in params), total, state.step, tuple(state.losses))
