"""Bellman-optimal schedules (BOSS stage 1, step 5): the ``Schedule`` object, its JSON file, and the schedule
of a given cost matrix (``schedule_from_cost``, ``schedules_from_cost``). No model and no cost estimation
here: the pipeline from a velocity model (noise -> teacher -> cost matrix -> DP) is
:func:`boss_fast.search.optimal_schedule`.

A schedule's ``times`` are flow times (t = 0 noise, t = 1 data), a subset of the base grid's points chosen by
``boss_fast.bellman``; ``sigmas()`` gives diffusers' sigma = 1 - t.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
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
)
from boss_fast.bellman import BellmanPath, bellman_path, bellman_paths

__all__ = ["OBJECTIVES", "Schedule", "schedule_from_cost", "schedules_from_cost"]

# "global": the DP over the sampler's own states (boss_fast.own_state, the error at t = 1); "local": BOSS's
# sum of one-step errors from the teacher's states (boss_fast.cost + boss_fast.bellman).
OBJECTIVES: tuple[str, ...] = ("global", "local")

SCHEDULE_FORMAT = "boss_fast.schedule"
SCHEDULE_VERSION = 1
_REQUIRED = ("times", "indices", "grid", "cost", "metric", "solver")
# A schedule file is a few kB (grid 100: 5 kB); a grid of 10^6 points is ~50 MB. Anything larger is refused
# before it is read.
MAX_FILE_BYTES = 64 * 2**20
# num_samples counts noises; beyond 2^53 it would not even round-trip through a float64 JSON reader.
_MAX_NUM_SAMPLES = 2**53
_MAX_SHAPE_DIMS = 16


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
        num_samples: noises the cost was averaged over (None when unknown), at most 2^53.
        fingerprint: optional identity of the model, e.g. ``model_fingerprint(model)``.
        discount: the DP's discount (1.0 for BOSS).
        shape: the shape of one sample the schedule was searched at, e.g. (1, 8, 8) (None when unknown);
            ``straighten`` and ``boss-fast sample`` use it when not given a shape.
        objective: "local" (BOSS: the sum of one-step errors from the teacher's states; ``cost`` is that sum)
            or "global" (the DP over the sampler's own states; ``cost`` is the error at t = 1 against the
            teacher). Files written before this field existed load as "local".

    The arrays are read-only copies; construction validates everything (ValueError naming the problem).

    Example:
        >>> sched = Schedule(times=np.array([0.0, 0.5, 1.0]), indices=np.array([0, 2, 4]), cost=0.1,
        ...                  grid=np.linspace(0.0, 1.0, 5))
        >>> sched.steps, sched.sigmas().tolist()
        (2, [1.0, 0.5, 0.0])
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
    shape: tuple[int, ...] | None = None
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
        if num_samples is not None and num_samples > _MAX_NUM_SAMPLES:
            raise ValueError(f"num_samples must be <= 2^53, got {num_samples}")
        shape = None if self.shape is None else _check_shape(self.shape)
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
            ("shape", shape),
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

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return (
            np.array_equal(self.times, other.times)
            and np.array_equal(self.indices, other.indices)
            and np.array_equal(self.grid, other.grid)
            and (self.cost, self.metric, self.solver, self.num_samples, self.fingerprint, self.discount)
            == (other.cost, other.metric, other.solver, other.num_samples, other.fingerprint, other.discount)
            and self.shape == other.shape
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
            "shape": None if self.shape is None else list(self.shape),
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
        times = _expect_numbers(doc["times"], "times", source)
        grid = _expect_numbers(doc["grid"], "grid", source)
        indices = _expect_numbers(doc["indices"], "indices", source, integers=True)
        for key, kinds in (
            ("cost", (int, float)),
            ("discount", (int, float)),
            ("metric", (str,)),
            ("solver", (str,)),
            ("num_samples", (int, type(None))),
            ("fingerprint", (str, type(None))),
            ("objective", (str,)),
            ("steps", (int,)),
            ("shape", (list, type(None))),
        ):
            if key in doc and (not isinstance(doc[key], kinds) or isinstance(doc[key], bool)):
                raise ValueError(f"{source}: {key} has the wrong type ({type(doc[key]).__name__})")
        if "steps" in doc and doc["steps"] != len(doc["times"]) - 1:
            raise ValueError(f"{source}: steps = {doc['steps']} but times holds {len(doc['times'])} points")
        cost = _number(doc["cost"], "cost", source)
        discount = _number(doc.get("discount", 1.0), "discount", source)
        num_samples = doc.get("num_samples")
        if num_samples is not None and not 1 <= num_samples <= _MAX_NUM_SAMPLES:
            raise ValueError(f"{source}: num_samples must be an integer in [1, 2^53], got {num_samples}")
        shape = doc.get("shape")
        if shape is not None:
            try:
                shape = _check_shape(shape)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{source}: shape: {err}") from None
        try:
            return cls(
                times=times,
                indices=indices,
                cost=cost,
                grid=grid,
                metric=doc["metric"],
                solver=doc["solver"],
                num_samples=num_samples,
                fingerprint=doc.get("fingerprint"),
                discount=discount,
                shape=shape,
                objective=doc.get("objective", "local"),
            )
        except (TypeError, ValueError, OverflowError) as err:
            raise ValueError(f"{source}: inconsistent schedule: {err}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> Schedule:
        """Read a schedule written by ``save``.

        A corrupted, truncated, foreign, oversized (> 64 MiB, checked before reading) or deeply nested file
        raises ValueError naming the file and the field; a missing file or a directory raises OSError.
        """
        source = os.fspath(path)
        with open(source, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            raw = f.read(MAX_FILE_BYTES + 1)  # bounded even if the file grows while being read
        if max(size, len(raw)) > MAX_FILE_BYTES:
            raise ValueError(
                f"{source}: {max(size, len(raw))} bytes, larger than any schedule "
                f"({MAX_FILE_BYTES // 2**20} MiB at most): not a schedule file"
            )
        try:
            doc = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
        except RecursionError:
            raise ValueError(f"{source}: JSON nested too deeply: not a schedule file") from None
        except (UnicodeDecodeError, ValueError) as err:  # JSONDecodeError, over-long integers
            raise ValueError(f"{source}: not valid JSON (corrupted or truncated?): {err}") from None
        return cls.from_dict(doc, source)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} in schedule JSON")


def _expect_numbers(value: object, key: str, source: str, integers: bool = False) -> np.ndarray:
    """``value`` as a float64 (int64 with ``integers``) array, or a ValueError naming ``key``."""
    kinds = (int,) if integers else (int, float)
    if (
        not isinstance(value, list)
        or not value
        or any(isinstance(x, bool) or not isinstance(x, kinds) for x in value)
    ):
        what = "integers" if integers else "numbers"
        raise ValueError(f"{source}: {key} must be a non-empty list of {what}")
    try:
        return np.asarray(value, dtype=np.int64 if integers else np.float64)
    except OverflowError:  # an integer beyond int64, or beyond float64's range
        raise ValueError(f"{source}: {key} holds a number too large to convert") from None


def _number(value: object, key: str, source: str) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:  # an integer beyond float64's range
        raise ValueError(f"{source}: {key} is too large to convert to a float") from None


def _check_shape(shape: object) -> tuple[int, ...]:
    """One sample's shape: 1 to 16 positive integers."""
    if isinstance(shape, str | bytes) or not isinstance(shape, Sequence | torch.Size):
        raise TypeError(f"shape must be a sequence of integers, got {shape!r}")
    dims = tuple(check_int(d, "shape entry") for d in shape)
    if not 1 <= len(dims) <= _MAX_SHAPE_DIMS or any(d > 2**31 for d in dims):
        raise ValueError(f"shape must have 1 to {_MAX_SHAPE_DIMS} entries, each in [1, 2^31], got {dims}")
    return dims


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
    shape: tuple[int, ...] | None = None,
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
        shape=shape,
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
    shape: Sequence[int] | None = None,
) -> Schedule:
    """The Bellman-optimal ``steps``-step schedule for a precomputed (N, N) cost matrix on grid ``times``.

    No model needed. ``metric``, ``solver``, ``num_samples``, ``fingerprint`` and ``shape`` (one sample's)
    only describe where the matrix came from and are stored in the schedule. ``steps`` must be in [1, N - 1].

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
        shape=None if shape is None else tuple(shape),
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
    shape: Sequence[int] | None = None,
) -> list[Schedule]:
    """Every budget from one DP table: ``result[k - 1]`` is the best k-step schedule, k = 1 .. max_steps.

    Example:
        >>> c = np.triu(np.square(np.subtract.outer(np.arange(5.0), np.arange(5.0))), 1)  # cost (j - i)^2
        >>> [s.times.tolist() for s in schedules_from_cost(c, [0.0, 0.25, 0.5, 0.75, 1.0], 2)]
        [[0.0, 1.0], [0.0, 0.5, 1.0]]
    """
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
            shape=None if shape is None else tuple(shape),
        )
        for p in paths
    ]
