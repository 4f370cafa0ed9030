"""The knobs of a straightening run: ``StraightenSettings`` (checked at construction, with the measured
defaults of each kind of run) and ``StraightenMemory`` (how a large model is held)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from boss_fast._validation import (
    AUTOCAST_DTYPES,
    SOLVERS,
    check_choice,
    check_float,
    check_int,
    check_seed,
    check_teacher,
)
from boss_fast.engine import WIDE_MODES
from boss_fast.grids import resolve_grid
from boss_fast.straighten.loss import LOSSES

# How pair_steps are cut (boss_fast.straighten.pairs): "uniform", each segment evenly; "adaptive", where a
# pilot run saw the velocity change.
PAIR_SPACINGS: tuple[str, ...] = ("uniform", "adaptive")
# The pairs' default teacher: Heun, PAIR_STEPS steps through the schedule's times, cut "adaptive"ly. On the
# digits DiT's Bellman schedules, 5000 noises (24 evaluations each + 32 x 100 for the pilot: 123,200, a
# quarter of the 500,000 of BOSS's own, Euler on the 100-step grid) it gave FD 38.32 / 30.31 at K = 2 / 4,
# full fine-tune, mean of 3 seeds, against 39.23 / 30.93, better on every seed, and LoRA likewise
# (benchmarks/results/straighten_sweep_pairs.md).
PAIR_STEPS = 12
PAIR_SOLVER = "heun"
# Where each step's training input comes from: "sampler" (the default), the student's own Euler steps from the
# start state (no gradient through them), so each step learns to land on the teacher from where the few-step
# sampler will actually be; "teacher", the teacher's state at tau_k (BOSS as published). On the digits DiT
# (full fine-tune, the default search's schedules, the default pairs, 3 seeds;
# benchmarks/results/straighten_sampler_*.md) it took FD from 40.16 / 30.07 to 32.30 / 27.66 at K = 2 / 4,
# better on every seed, and likewise on the Bellman schedules and with LoRA (docs/results.md).
INPUTS: tuple[str, ...] = ("sampler", "teacher")

__all__ = [
    "FULL_LR",
    "INPUTS",
    "LORA_ALPHA_PER_RANK",
    "LORA_LR",
    "PAIR_SOLVER",
    "PAIR_SPACINGS",
    "PAIR_STEPS",
    "PairTeacher",
    "StraightenMemory",
    "StraightenSettings",
]

# The learning rates StraightenSettings takes when lr is not given. Full fine-tuning: the published 2e-4.
FULL_LR = 2e-4
# LoRA: B starts at zero and the adapters need a larger step. On the digits DiT (rank 4, 600 iterations,
# K = 2; benchmarks/results/straighten_sweep_lora.md) FD was 88.4 / 70.0 / 65.6 at lr 1e-3 / 3e-3 / 1e-2 on
# attention and MLP, and 44.9 at 3e-3 with the modulation and the head adapted too (full fine-tune: 42.3).
LORA_LR = 3e-3
# LoRA's alpha when not given, per unit of rank (scale alpha / rank). Under Adam a larger alpha acts much like
# a larger lr (alpha 4r at lr 1e-3: FD 74.7, between lr 3e-3 and 1e-2 at alpha r), so it stays at 1.
LORA_ALPHA_PER_RANK = 1.0


@dataclass(frozen=True)
class PairTeacher:
    """Which teacher makes the straightening pairs (``straightening_pairs(pair_teacher=...)``); the default
    is BOSS's own: the schedule's solver on the schedule's grid.

    Attributes:
        steps: None: the schedule's grid; an int >= the schedule's segments: that many steps through its
            times (:func:`~boss_fast.straighten.pair_grid`).
        solver: None: the schedule's; "euler", "heun", "rk4" or "dopri5": that one.
        spacing: how ``steps`` are cut, "uniform" or "adaptive" (an Euler pilot's
            :func:`~boss_fast.straighten.pairs.pair_density`; needs ``steps`` and a fixed-step solver).

    Example:
        >>> PairTeacher(steps=12, solver="heun", spacing="adaptive").spacing
        'adaptive'
        >>> PairTeacher().steps is None  # BOSS's own: the schedule's solver on its grid
        True
    """

    steps: int | None = None
    solver: str | None = None
    spacing: str = "uniform"

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", _check_pair_teacher(self.steps, self.solver, self.spacing, str))


def _check_pair_teacher(
    steps: object, solver: object, spacing: object, name: Callable[[str], str]
) -> int | None:
    """The pair teacher's fields, each refused by ``name(field)`` (``pair_steps``, ``pair_solver``, ...);
    returns ``steps`` as a plain int (or None)."""
    if steps is not None:
        steps = check_int(steps, name("pair_steps"))
    if solver is not None:
        check_choice(solver, SOLVERS, name("pair_solver"))
    check_choice(spacing, PAIR_SPACINGS, name("pair_spacing"))
    if spacing == "adaptive" and (steps is None or solver == "dopri5"):
        raise ValueError(
            f"{name('pair_spacing')} 'adaptive' cuts pair_steps fixed steps: set pair_steps and a fixed-step "
            f"pair_solver (got pair_steps={steps!r}, pair_solver={solver!r})"
        )
    return steps


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
        pair_steps: an int >= the schedule's segments (default ``PAIR_STEPS``, 12): the pairs' teacher runs
            that many steps through the schedule's times (:func:`pair_grid`); None: on the schedule's grid
            (``grid``), as published.
        pair_solver: the pairs' teacher's solver, "euler", "heun" (default, ``PAIR_SOLVER``), "rk4" or
            "dopri5"; None: the schedule's (``solver``), as published.
        pair_spacing: how ``pair_steps`` are cut (``straightening_pairs``): "uniform" or "adaptive" (needs
            ``pair_steps`` and a fixed-step solver); None (default) takes "adaptive" where it can, else
            "uniform", at construction. BOSS's own pairs: ``pair_steps=None, pair_solver=None``.
        iters: optimiser steps (>= 1). batch_size: the global batch (split across DDP ranks).
        lr: Adam's learning rate (> 0), reached linearly over ``warmup`` steps (0: from the first). None (the
            default) takes the measured default of the run's kind at construction: ``FULL_LR`` (2e-4) without
            ``lora_rank``, ``LORA_LR`` with it; a given value is kept.
        ema: the decay of the returned weights' EMA, in [0, 1) (0 keeps the last weights).
        ema_warmup: decay ``min(ema, (1 + n) / (10 + n))`` at step n (diffusers' ``EMAModel`` warm-up).
            Without it the teacher's weights keep ``ema ** iters`` of the average: 13.5% for 0.999 and 2000
            steps, which on the digits DiT cost FD 61 instead of ~40 at K = 2 (measured).
        loss: "l2" or "pseudo_huber"; normalize: Simple ReFlow's 1/stopgrad(loss) weighting.
        inputs: each step's input and target. "sampler" (default): step k starts from the sampler's own
            state, the student's Euler steps 0 .. k - 1 from the start state with the current weights and no
            gradient, and its target is the velocity that lands on the teacher's state at tau_{k+1} from
            there; (K - 1) / 2 more forward passes per pair on average. "teacher": the teacher's state at
            tau_k, as published (BOSS).
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
    pair_steps: int | None = PAIR_STEPS
    pair_solver: str | None = PAIR_SOLVER
    pair_spacing: str | None = None
    inputs: str = "sampler"

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
        check_choice(self.inputs, INPUTS, name("inputs"))
        self._check_lora(name, put)
        self._check_pairs(name, put)
        if not isinstance(self.memory, StraightenMemory):
            raise TypeError(f"{name('memory')} must be a StraightenMemory, got {type(self.memory).__name__}")

    def _check_pairs(self, name: Callable[[str], str], put: Callable[[str, object], None]) -> None:
        if self.pair_spacing is None:  # the measured default where it applies (see the class docstring)
            fixed = self.pair_steps is not None and self.pair_solver != "dopri5"
            put("pair_spacing", "adaptive" if fixed else "uniform")
        put("pair_steps", _check_pair_teacher(self.pair_steps, self.pair_solver, self.pair_spacing, name))
        if self.pair_solver is not None:
            check_teacher(self.pair_solver, self.teacher_mode, name("teacher_mode"))

    @property
    def pair_teacher(self) -> PairTeacher:
        """The pairs' teacher of these settings (``pair_steps``, ``pair_solver``, ``pair_spacing``)."""
        return PairTeacher(self.pair_steps, self.pair_solver, self.pair_spacing)

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
