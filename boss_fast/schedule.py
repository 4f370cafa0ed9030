"""Bellman-optimal schedules (BOSS stage 1, step 5): the ``Schedule`` object, its JSON file, and the
one-call pipeline from a velocity model (noise -> teacher -> cost matrix -> dynamic program).

A schedule's ``times`` are flow times (t = 0 noise, t = 1 data), a subset of the base grid's points chosen by
``boss_fast.bellman``; ``sigmas()`` gives diffusers' sigma = 1 - t.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from boss_fast._validation import (
    METRICS,
    SOLVERS,
    as_times,
    atomic_write,
    check_choice,
    check_float,
    check_int,
    check_teacher,
)
from boss_fast.bellman import BellmanPath, bellman_path, bellman_paths
from boss_fast.cost import _accumulate_cost
from boss_fast.grids import uniform_grid
from boss_fast.own_state import accumulate_own_state, own_state_paths
from boss_fast.trajectories import VelocityFn, model_fingerprint, seeded_noise

__all__ = ["Schedule", "optimal_schedule", "optimal_schedules", "schedule_from_cost", "schedules_from_cost"]

# "global": the DP over the sampler's own states (boss_fast.own_state, the error at t = 1); "local": BOSS's
# sum of one-step errors from the teacher's states (boss_fast.cost + boss_fast.bellman).
OBJECTIVES: tuple[str, ...] = ("global", "local")
DEFAULT_OBJECTIVE = "global"
# The teacher each objective uses when none is given: BOSS's Euler (the published setting), and for the
# global objective (whose targets are the teacher's states) the most accurate fixed-step solver that keeps
# every budget up to K = 10 on a 100-step grid within 12x the local search's evaluations: Heun (200 + 856
# evaluations per sample vs 100, 10.6x; RK4 would make it 12.6x). On the bundled 2-D mixtures (std 0.2 and
# 0.05) Heun and RK4 teachers gave the same global schedules at every K = 2..10.
_DEFAULT_SOLVER = {"local": "euler", "global": "heun"}

SCHEDULE_FORMAT = "boss_fast.schedule"
SCHEDULE_VERSION = 1
_REQUIRED = ("times", "indices", "grid", "cost", "metric", "solver")


@dataclass(frozen=True, eq=False)
class Schedule:
    """A K-step sampling schedule chosen on a base grid.

    Attributes:
        times: (K + 1,) float64, strictly increasing, from ``grid[0]`` to ``grid[-1]``;
            ``times == grid[indices]``.
        indices: (K + 1,) int64 indices into ``grid``, from 0 to len(grid) - 1.
        cost: the path's total (discounted) cost in the cost matrix's units (e.g. mean squared L2 per sample).
        grid: (N,) float64 base grid the cost matrix was computed on.
        metric: "l2sq" or "l2", the cost metric.
        solver: the teacher's solver, "euler", "heun", "rk4" or "dopri5".
        num_samples: noises the cost was averaged over (None when unknown).
        fingerprint: optional identity of the model, e.g. ``model_fingerprint(model)``.
        discount: the DP's discount (1.0 for BOSS).
        objective: "local" (BOSS: the sum of one-step errors from the teacher's states; ``cost`` is that sum)
            or "global" (the DP over the sampler's own states; ``cost`` is the error at t = 1 against the
            teacher). Files written before this field existed load as "local".

    The arrays are read-only copies; construction validates everything (ValueError naming the problem).
    """

    times: np.ndarray
    indices: np.ndarray
    cost: float
    grid: np.ndarray
    metric: str = "l2sq"
    solver: str = "euler"
    num_samples: int | None = None
    fingerprint: str | None = None
    discount: float = 1.0
    objective: str = "local"

    def __post_init__(self) -> None:
        grid = as_times(self.grid, "grid")
        times = as_times(self.times, "times")
        indices = np.asarray(self.indices)
        if indices.ndim != 1 or indices.dtype.kind not in "iu":
            raise ValueError(
                f"indices must be a 1-D integer array, got dtype {indices.dtype}, shape {indices.shape}"
            )
        indices = indices.astype(np.int64)
        if len(indices) != len(times):
            raise ValueError(f"indices has {len(indices)} entries but times has {len(times)}")
        if indices[0] != 0 or indices[-1] != len(grid) - 1:
            raise ValueError(
                f"indices must run from 0 to len(grid) - 1 = {len(grid) - 1}, "
                f"got {indices[0]} .. {indices[-1]}"
            )
        if np.any(np.diff(indices) <= 0):
            raise ValueError(f"indices must be strictly increasing, got {indices.tolist()}")
        if not np.array_equal(grid[indices], times):
            m = int(np.flatnonzero(grid[indices] != times)[0])
            raise ValueError(
                f"times[{m}] = {times[m].item()!r} but grid[indices[{m}]] = {grid[indices[m]].item()!r}"
            )
        cost = check_float(self.cost, "cost")
        discount = check_float(self.discount, "discount")
        if discount <= 0.0:
            raise ValueError(f"discount must be > 0, got {discount}")
        check_choice(self.metric, METRICS, "metric")
        check_choice(self.solver, SOLVERS, "solver")
        check_choice(self.objective, OBJECTIVES, "objective")
        num_samples = None if self.num_samples is None else check_int(self.num_samples, "num_samples")
        if self.fingerprint is not None and not isinstance(self.fingerprint, str):
            raise TypeError(f"fingerprint must be a str or None, got {type(self.fingerprint).__name__}")
        for array in (grid, times, indices):
            array.setflags(write=False)
        for name, value in (
            ("grid", grid),
            ("times", times),
            ("indices", indices),
            ("cost", cost),
            ("discount", discount),
            ("num_samples", num_samples),
        ):
            object.__setattr__(self, name, value)

    @property
    def steps(self) -> int:
        """K, the number of steps (model evaluations of an Euler sampler)."""
        return len(self.times) - 1

    def sigmas(self) -> np.ndarray:
        """diffusers' sigmas, ``1 - times`` (float64, decreasing from about 1 to about 0)."""
        return 1.0 - self.times

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        """The times as a (K + 1,) tensor on ``device`` (float64 by default, the exact times).

        Named like ``Tensor.to`` so a Schedule goes wherever a time grid is moved with ``.to(device)``: e.g.
        flow_matching's ``ODESolver.sample(x, step_size=None, time_grid=sched)`` steps exactly at its times.
        """
        return torch.tensor(self.times.tolist(), dtype=dtype, device=device)

    def diffusers_sigmas(
        self,
        shift: float | None = None,
        mu: float | None = None,
        *,
        time_shift_type: str = "exponential",
        config: Mapping[str, Any] | None = None,
    ) -> list[float]:
        """Sigmas for diffusers' stock ``FlowMatchEulerDiscreteScheduler`` that step at this schedule's times.

        That scheduler shifts any ``sigmas=`` it is given (by ``shift``, or with dynamic shifting by ``mu``)
        and appends a terminal 0; these are the pre-images, so after its shift it steps at ``1 - times``
        (up to its float32 arithmetic). Use as ``pipe(..., num_inference_steps=K, sigmas=...)``.

        Args:
            shift: the scheduler's static shift (``config.shift``; SD3 uses 3.0).
            mu: the dynamic shift the pipeline passes when ``use_dynamic_shifting`` is on (Flux, SD3.5 at
                some resolutions): ``calculate_shift(image_seq_len, ...)``.
            time_shift_type: the dynamic shift's form, "exponential" (default) or "linear".
            config: a scheduler config (``pipe.scheduler.config``) to read ``shift``, ``use_dynamic_shifting``
                and ``time_shift_type`` from, and to check for options this cannot invert.

        Raises:
            ValueError: the schedule does not end at t = 1 (the scheduler always ends at sigma 0), both or
                neither of shift and mu for a dynamic config, a non-positive shift or mu, or a config with
                ``shift_terminal``, Karras / exponential / beta sigmas, ``invert_sigmas`` or
                ``stochastic_sampling``.
        """
        if self.times[-1] != 1.0:
            raise ValueError(
                f"diffusers' flow-match scheduler always ends at sigma 0 (t = 1); this schedule ends at "
                f"t = {float(self.times[-1])!r}"
            )
        dynamic = False
        if config is not None:
            for key in ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                        "invert_sigmas", "stochastic_sampling"):  # fmt: skip
                if config.get(key):
                    raise ValueError(
                        f"the scheduler config sets {key}={config.get(key)!r}, which remaps sigmas in a way "
                        "diffusers_sigmas does not invert; use BossScheduler.from_schedule instead"
                    )
            dynamic = bool(config.get("use_dynamic_shifting", False))
            time_shift_type = config.get("time_shift_type", "exponential")
            if shift is None and not dynamic:
                shift = config.get("shift", 1.0)
        if dynamic and mu is None:
            raise ValueError("the config uses dynamic shifting: pass the pipeline's mu")
        if shift is not None and mu is not None:
            raise ValueError("pass shift (static shifting) or mu (dynamic shifting), not both")
        target = 1.0 - self.times[:-1]  # the sigmas the scheduler must step at, > 0
        if mu is not None:
            mu = check_float(mu, "mu")
            check_choice(time_shift_type, ("exponential", "linear"), "time_shift_type")
            scale = math.exp(mu) if time_shift_type == "exponential" else mu
            if scale <= 0:
                raise ValueError(f"a linear time shift needs mu > 0, got {mu}")
            # sigma' = scale / (scale + (1 / sigma - 1))  <=>  sigma = 1 / (1 + scale * (1 / sigma' - 1))
            sigmas = 1.0 / (1.0 + scale * (1.0 / target - 1.0))
        else:
            s = 1.0 if shift is None else check_float(shift, "shift")
            if s <= 0:
                raise ValueError(f"shift must be > 0, got {s}")
            # sigma' = s sigma / (1 + (s - 1) sigma)  <=>  sigma = sigma' / (s - (s - 1) sigma')
            sigmas = target / (s - (s - 1.0) * target)
        return sigmas.tolist()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return (
            np.array_equal(self.times, other.times)
            and np.array_equal(self.indices, other.indices)
            and np.array_equal(self.grid, other.grid)
            and (self.cost, self.metric, self.solver, self.num_samples, self.fingerprint, self.discount)
            == (other.cost, other.metric, other.solver, other.num_samples, other.fingerprint, other.discount)
            and self.objective == other.objective
        )

    __hash__ = None  # type: ignore[assignment]  # holds arrays

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: a format marker and version, then every field (floats round-trip exactly)."""
        return {
            "format": SCHEDULE_FORMAT,
            "version": SCHEDULE_VERSION,
            "steps": self.steps,
            "times": self.times.tolist(),
            "indices": self.indices.tolist(),
            "grid": self.grid.tolist(),
            "cost": self.cost,
            "metric": self.metric,
            "solver": self.solver,
            "num_samples": self.num_samples,
            "fingerprint": self.fingerprint,
            "discount": self.discount,
            "objective": self.objective,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the schedule as versioned JSON, atomically (temp file beside it, fsync, rename)."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))

    @classmethod
    def from_dict(cls, doc: object, source: str = "schedule") -> Schedule:
        """Rebuild a schedule from ``to_dict``'s document, refusing anything else with a ValueError."""
        if not isinstance(doc, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(doc).__name__}")
        if doc.get("format") != SCHEDULE_FORMAT:
            raise ValueError(
                f"{source}: not a boss_fast schedule (format {doc.get('format')!r}, "
                f"expected {SCHEDULE_FORMAT!r})"
            )
        version = doc.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEDULE_VERSION:
            raise ValueError(f"{source}: unsupported schedule version {version!r} (this reader knows 1)")
        missing = [key for key in _REQUIRED if key not in doc]
        if missing:
            raise ValueError(f"{source}: missing key(s) {', '.join(missing)}")
        _expect_numbers(doc["times"], "times", source)
        _expect_numbers(doc["grid"], "grid", source)
        _expect_numbers(doc["indices"], "indices", source, integers=True)
        for key, kinds in (
            ("cost", (int, float)),
            ("discount", (int, float)),
            ("metric", (str,)),
            ("solver", (str,)),
            ("num_samples", (int, type(None))),
            ("fingerprint", (str, type(None))),
            ("objective", (str,)),
            ("steps", (int,)),
        ):
            if key in doc and (not isinstance(doc[key], kinds) or isinstance(doc[key], bool)):
                raise ValueError(f"{source}: {key} has the wrong type ({type(doc[key]).__name__})")
        if "steps" in doc and doc["steps"] != len(doc["times"]) - 1:
            raise ValueError(f"{source}: steps = {doc['steps']} but times holds {len(doc['times'])} points")
        try:
            return cls(
                times=np.asarray(doc["times"], dtype=np.float64),
                indices=np.asarray(doc["indices"], dtype=np.int64),
                cost=doc["cost"],
                grid=np.asarray(doc["grid"], dtype=np.float64),
                metric=doc["metric"],
                solver=doc["solver"],
                num_samples=doc.get("num_samples"),
                fingerprint=doc.get("fingerprint"),
                discount=doc.get("discount", 1.0),
                objective=doc.get("objective", "local"),
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: inconsistent schedule: {err}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> Schedule:
        """Read a schedule written by ``save``; a corrupted, truncated or foreign file raises ValueError."""
        source = os.fspath(path)
        with open(source, "rb") as f:
            raw = f.read()
        try:
            doc = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{source}: not valid JSON (corrupted or truncated?): {err}") from None
        return cls.from_dict(doc, source)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} in schedule JSON")


def _expect_numbers(value: object, key: str, source: str, integers: bool = False) -> None:
    kinds = (int,) if integers else (int, float)
    if (
        not isinstance(value, list)
        or not value
        or any(isinstance(x, bool) or not isinstance(x, kinds) for x in value)
    ):
        what = "integers" if integers else "numbers"
        raise ValueError(f"{source}: {key} must be a non-empty list of {what}")


# -------------------------------------------------------------------------------------------- building


def _from_path(
    path: BellmanPath,
    grid: np.ndarray,
    *,
    metric: str,
    solver: str,
    num_samples: int | None,
    fingerprint: str | None,
    discount: float,
) -> Schedule:
    return Schedule(
        times=grid[path.indices],
        indices=path.indices,
        cost=path.cost,
        grid=grid,
        metric=metric,
        solver=solver,
        num_samples=num_samples,
        fingerprint=fingerprint,
        discount=discount,
    )


def _check_cost_and_grid(cost: object, times: object) -> tuple[np.ndarray, np.ndarray]:
    grid = as_times(times, "times")
    matrix = np.asarray(cost)
    if matrix.shape != (len(grid), len(grid)):
        raise ValueError(
            f"cost must have shape ({len(grid)}, {len(grid)}) for {len(grid)} grid times, got {matrix.shape}"
        )
    return matrix, grid


def schedule_from_cost(
    cost: np.ndarray,
    times: Sequence[float] | np.ndarray,
    steps: int,
    *,
    discount: float = 1.0,
    backend: str = "auto",
    metric: str = "l2sq",
    solver: str = "euler",
    num_samples: int | None = None,
    fingerprint: str | None = None,
) -> Schedule:
    """The Bellman-optimal ``steps``-step schedule for a precomputed (N, N) cost matrix on grid ``times``.

    No model needed. ``metric``, ``solver``, ``num_samples`` and ``fingerprint`` only describe where the
    matrix came from and are stored in the schedule. ``steps`` must be in [1, N - 1].

    Example:
        >>> c = np.triu(np.square(np.subtract.outer(np.arange(5.0), np.arange(5.0))), 1)  # cost (j - i)^2
        >>> schedule_from_cost(c, [0.0, 0.25, 0.5, 0.75, 1.0], 2).times
        array([0. , 0.5, 1. ])
    """
    matrix, grid = _check_cost_and_grid(cost, times)
    steps = check_int(steps, "steps")
    if steps >= len(grid):
        raise ValueError(
            f"steps must be < len(times) = {len(grid)} (at most {len(grid) - 1} steps), got {steps}"
        )
    path = bellman_path(matrix, steps, discount=discount, backend=backend)
    return _from_path(
        path,
        grid,
        metric=metric,
        solver=solver,
        num_samples=num_samples,
        fingerprint=fingerprint,
        discount=discount,
    )


def schedules_from_cost(
    cost: np.ndarray,
    times: Sequence[float] | np.ndarray,
    max_steps: int,
    *,
    discount: float = 1.0,
    backend: str = "auto",
    metric: str = "l2sq",
    solver: str = "euler",
    num_samples: int | None = None,
    fingerprint: str | None = None,
) -> list[Schedule]:
    """Every budget from one DP table: ``result[k - 1]`` is the best k-step schedule, k = 1 .. max_steps."""
    matrix, grid = _check_cost_and_grid(cost, times)
    max_steps = check_int(max_steps, "max_steps")
    if max_steps >= len(grid):
        raise ValueError(f"max_steps must be < len(times) = {len(grid)}, got {max_steps}")
    paths = bellman_paths(matrix, max_steps, discount=discount, backend=backend)
    return [
        _from_path(
            p,
            grid,
            metric=metric,
            solver=solver,
            num_samples=num_samples,
            fingerprint=fingerprint,
            discount=discount,
        )
        for p in paths
    ]


def _module_placement(velocity: object) -> tuple[torch.device | None, torch.dtype | None]:
    if isinstance(velocity, torch.nn.Module):
        for p in velocity.parameters():
            if p.is_floating_point():
                return p.device, p.dtype
    return None, None


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

    def batch(self, start: int, stop: int) -> torch.Tensor:
        return seeded_noise(self.shape, start, stop, seed=self.seed, dtype=self.dtype)

    def identity(self) -> dict[str, str]:
        return {
            "noise": f"seeded_noise(seed={self.seed})",
            "sample_shape": str(self.shape),
            "dtype": str(self.dtype),
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
    times = (
        uniform_grid(grid)
        if isinstance(grid, int | np.integer) and not isinstance(grid, bool)
        else as_times(grid, "grid")
    )
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
    model_device, model_dtype = _module_placement(velocity)
    device = torch.device(device) if device is not None else (model_device or torch.device("cpu"))
    dtype = dtype or model_dtype or torch.get_default_dtype()
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    fingerprint = model_fingerprint(velocity) if isinstance(velocity, torch.nn.Module) else None
    search = _Search(
        times, shape, num_samples, batch_size, seed, objective, solver, metric, device, dtype, fingerprint
    )
    return search, steps, discount


def _global_schedules(
    velocity: VelocityFn,
    search: _Search,
    max_steps: int,
    progress: bool,
    checkpoint: str | os.PathLike | None,
    mode: str | None,
) -> dict[int, Schedule]:
    table = accumulate_own_state(
        velocity,
        search.batch,
        search.num_samples,
        search.times,
        max_steps,
        batch_size=search.batch_size,
        solver=search.solver,
        metric=search.metric,
        device=search.device,
        progress=progress,
        checkpoint=checkpoint,
        identity=search.identity(),
        mode=mode,
    )
    return {
        path.steps: Schedule(
            times=search.times[path.indices],
            indices=path.indices,
            cost=path.cost,
            grid=search.times,
            metric=search.metric,
            solver=search.solver,
            num_samples=search.num_samples,
            fingerprint=search.fingerprint,
            objective="global",
        )
        for path in own_state_paths(table)
    }


def optimal_schedule(
    velocity: VelocityFn,
    shape: Sequence[int],
    steps: int,
    grid: int | Sequence[float] | np.ndarray = 100,
    num_samples: int = 256,
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
) -> Schedule:
    """The optimal ``steps``-step schedule of a velocity model, end to end.

    Draws ``num_samples`` Gaussian noises (``seeded_noise``: sample m depends only on (seed, m), so the draw
    does not depend on ``batch_size``, the device or the number of processes) and runs the teacher on the grid
    in batches. Then, by ``objective``:

    - "global" (default): the DP over the sampler's own states (``boss_fast.own_state``; Pei et al. 2025):
      the schedule whose Euler sampler ends closest to the teacher at t = 1, on average over the noises.
      About ``steps`` x N model evaluations per sample beside the teacher's; memory 3 x num_samples x N
      sample-sized states.
    - "local": BOSS as published: the cost matrix of one-step errors from the teacher's states
      (``boss_fast.cost``, memory one batch's trajectory) and the exact Bellman DP (``boss_fast.bellman``).

    ``optimal_schedules`` returns every budget up to K from the same search.

    Args:
        velocity: ``velocity(x, t)``, t = 0 noise, t = 1 data.
        shape: the shape of ONE sample, without the batch dimension, e.g. (3, 32, 32).
        steps: the budget K, 1 <= K <= N - 1 (an int).
        grid: an int n for ``uniform_grid(n)``, or explicit grid times (N,) in [0, 1].
        num_samples, batch_size: noises in total and per teacher batch (reference: 100 noises).
        seed: seed of the noise stream (>= 0).
        solver: teacher solver; None: "heun" for the global objective (its targets; the most accurate
            fixed-step teacher within 12x the local search's evaluations at K = 10), "euler" for the local
            one (BOSS's reference). metric: "l2sq" (BOSS) or "l2" (GITS).
        device, dtype: where and in what dtype the teacher runs; default: the model's first floating
            parameter's device and dtype when it is an ``nn.Module``, else CPU and torch's default dtype.
        backend: the local objective's DP backend, see ``boss_fast.bellman``.
        objective: "global" or "local", see above.
        discount: the local DP's discount on later steps (GITS); 1.0 is BOSS.
        progress, checkpoint, mode: as in ``boss_fast.cost.cost_matrix`` (mode: the teacher on a recording
            ``Sampler``, e.g. "cuda_graph"); the global objective checkpoints after every DP level
            (``boss_fast.own_state``), with the same resume and refusal rules.

    Returns:
        A ``Schedule`` with ``objective`` set; its ``fingerprint`` is ``model_fingerprint(velocity)`` for a
        module, else None.
    """
    search, steps, discount = _validate_search(
        velocity, shape, steps, "steps", grid, num_samples, batch_size, seed, objective, solver, metric,
        device, dtype, backend, discount, mode,
    )  # fmt: skip
    if search.objective == "global":
        return _global_schedules(velocity, search, steps, progress, checkpoint, mode)[steps]
    cost = _accumulate_cost(
        velocity,
        search.batch,
        search.num_samples,
        search.times,
        batch_size=search.batch_size,
        solver=search.solver,
        metric=search.metric,
        device=search.device,
        progress=progress,
        checkpoint=checkpoint,
        identity=search.identity(),
        mode=mode,
    )
    return schedule_from_cost(
        cost,
        search.times,
        steps,
        discount=discount,
        backend=backend,
        metric=search.metric,
        solver=search.solver,
        num_samples=search.num_samples,
        fingerprint=search.fingerprint,
    )


def optimal_schedules(
    velocity: VelocityFn,
    shape: Sequence[int],
    max_steps: int,
    objective: str = DEFAULT_OBJECTIVE,
    grid: int | Sequence[float] | np.ndarray = 100,
    num_samples: int = 256,
    batch_size: int = 256,
    seed: int = 0,
    solver: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    mode: str | None = None,
    *,
    metric: str = "l2sq",
    backend: str = "auto",
    discount: float = 1.0,
) -> dict[int, Schedule]:
    """The optimal schedule of every budget K = 1 .. ``max_steps`` from ONE search: ``{K: Schedule}``.

    Arguments as ``optimal_schedule`` (``max_steps`` in place of ``steps``). ``result[K]`` equals
    ``optimal_schedule(..., steps=K)`` with the same arguments: the global DP's levels and the local
    Bellman table do not depend on the largest budget asked for.

    Example:
        >>> scheds = optimal_schedules(lambda x, t: -x, (2,), 3, grid=10, num_samples=8)
        >>> [s.steps for s in scheds.values()], scheds[3].objective
        ([1, 2, 3], 'global')
    """
    search, max_steps, discount = _validate_search(
        velocity, shape, max_steps, "max_steps", grid, num_samples, batch_size, seed, objective, solver,
        metric, device, dtype, backend, discount, mode,
    )  # fmt: skip
    if search.objective == "global":
        return _global_schedules(velocity, search, max_steps, progress, checkpoint, mode)
    cost = _accumulate_cost(
        velocity,
        search.batch,
        search.num_samples,
        search.times,
        batch_size=search.batch_size,
        solver=search.solver,
        metric=search.metric,
        device=search.device,
        progress=progress,
        checkpoint=checkpoint,
        identity=search.identity(),
        mode=mode,
    )
    scheds = schedules_from_cost(
        cost,
        search.times,
        max_steps,
        discount=discount,
        backend=backend,
        metric=search.metric,
        solver=search.solver,
        num_samples=search.num_samples,
        fingerprint=search.fingerprint,
    )
    return {s.steps: s for s in scheds}
