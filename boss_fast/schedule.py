"""Bellman-optimal schedules (BOSS stage 1, step 5): the ``Schedule`` object, its JSON file, and the schedule
of a given cost matrix, every budget at once (``schedules_from_cost``); K steps from a schedule file by the
one rule ``boss-fast sigmas --steps K`` and the ComfyUI node share (``schedule_for_steps``). No model and no
cost estimation here: the pipeline from a velocity model (noise -> teacher -> cost matrix -> DP) is
:func:`boss_fast.search.optimal_schedules`.

A schedule's ``times`` are flow times (t = 0 noise, t = 1 data), a subset of the base grid's points chosen by
``boss_fast.bellman``; ``sigmas()`` gives diffusers' sigma = 1 - t.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from boss_fast._header import check_header, make_header
from boss_fast._identity import content_digest
from boss_fast._validation import (
    METRICS,
    SOLVERS,
    START_RULES,
    as_times,
    atomic_write,
    check_choice,
    check_float,
    check_int,
    check_shape,
)
from boss_fast.bellman import BellmanPath, bellman_paths

__all__ = [
    "OBJECTIVES",
    "Schedule",
    "ScheduleSet",
    "interpolate_schedule",
    "loglinear_times",
    "max_budget",
    "read_json",
    "read_schedule_file",
    "schedule_for_steps",
    "schedules_from_cost",
    "snap_to_grid",
]

# "global": the DP over the sampler's own states (boss_fast.global_objective, the error at t = 1); "local":
# BOSS's sum of one-step errors from the teacher's states (boss_fast.cost + boss_fast.bellman).
OBJECTIVES: tuple[str, ...] = ("global", "local")

SCHEDULE_FORMAT = "boss_fast.schedule"
# 2: the start rule ("start"). A schedule pinned at the grid's start ("zero") is still written as version 1,
# byte for byte what earlier versions wrote (their readers read it); one with another rule is version 2, which
# an older reader refuses by its version instead of sampling it from the wrong state.
SCHEDULE_VERSION = 2
_REQUIRED = ("times", "indices", "grid", "cost", "metric", "solver")
# A schedule file is a few kB (grid 100: 5 kB); a grid of 10^6 points is ~50 MB. Anything larger is refused
# before it is read.
MAX_FILE_BYTES = 64 * 2**20
# num_samples counts noises; beyond 2^53 it would not even round-trip through a float64 JSON reader.
_MAX_NUM_SAMPLES = 2**53


@dataclass(frozen=True, eq=False)
class Schedule:
    """A K-step sampling schedule chosen on a base grid.

    Attributes:
        times: (K + 1,) float64, strictly increasing, from ``grid[indices[0]]`` (``grid[0]`` when ``start`` is
            "zero") to ``grid[-1]``; ``times == grid[indices]``.
        indices: (K + 1,) int64 indices into ``grid``, ending at len(grid) - 1 (starting at 0 for "zero").
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
        mu: the dynamic shift (diffusers' ``mu``) the pipeline passes at the resolution the schedule was
            searched at (Flux; SD3 under dynamic shifting), None otherwise: ``BossScheduler`` warns when a
            pipeline passes another (another resolution). Written to the file only when set.
        resampled_from: None for a searched schedule; for one interpolated from another budget
            (:func:`interpolate_schedule`, ``ScheduleSet.resample`` on a set without a cost table) that
            budget K. No model ran for it, so its ``cost`` is unknown: NaN here, ``null`` in JSON.
        start: the start rule, the state sampling starts from at ``times[0]`` (``boss_fast.ode.start_state``):
            "zero" (pinned at the grid's first point, from the noise: BOSS as published; files written before
            this field existed load as "zero"), "noise" (the noise itself at ``times[0]``, as a diffusers
            pipeline does with a first sigma below 1) or "scaled" (``(1 - times[0]) * noise``, as ComfyUI does
            for flow models from an empty latent). Decided by the search and honoured, or refused by name, by
            every consumer.

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
    resampled_from: int | None = None
    mu: float | None = None
    start: str = "zero"

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
        check_choice(self.start, START_RULES, "start")
        if indices[-1] != len(grid) - 1 or indices[0] < 0:
            raise ValueError(
                f"indices must run from a grid point to len(grid) - 1 = {len(grid) - 1}, "
                f"got {indices[0]} .. {indices[-1]}"
            )
        if indices[0] != 0 and self.start == "zero":
            raise ValueError(
                f"start 'zero' pins the first time at grid[0], but indices[0] = {indices[0]} (t = "
                f"{grid[indices[0]].item()!r}); a schedule that starts later has start 'noise' or 'scaled'"
            )
        if np.any(np.diff(indices) <= 0):
            raise ValueError(f"indices must be strictly increasing, got {indices.tolist()}")
        if not np.array_equal(grid[indices], times):
            m = int(np.flatnonzero(grid[indices] != times)[0])
            raise ValueError(
                f"times[{m}] = {times[m].item()!r} but grid[indices[{m}]] = {grid[indices[m]].item()!r}"
            )
        cost = _check_cost(self.cost, self.resampled_from)
        discount = check_float(self.discount, "discount")
        if discount <= 0.0:
            raise ValueError(f"discount must be > 0, got {discount}")
        check_choice(self.metric, METRICS, "metric")
        check_choice(self.solver, SOLVERS, "solver")
        check_choice(self.objective, OBJECTIVES, "objective")
        num_samples = None if self.num_samples is None else check_int(self.num_samples, "num_samples")
        if num_samples is not None and num_samples > _MAX_NUM_SAMPLES:
            raise ValueError(f"num_samples must be <= 2^53, got {num_samples}")
        shape = None if self.shape is None else check_shape(self.shape)
        mu = None if self.mu is None else check_float(self.mu, "mu")
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
            ("mu", mu),
        ):
            object.__setattr__(self, name, value)

    @property
    def steps(self) -> int:
        """K, the number of steps (model evaluations of an Euler sampler)."""
        return len(self.times) - 1

    def sigmas(self) -> np.ndarray:
        """diffusers' sigmas, ``1 - times`` (float64, decreasing from about 1 to about 0)."""
        return 1.0 - self.times

    def as_tensor(
        self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        """The times as a (K + 1,) tensor on ``device`` (float64 by default, the exact times), e.g. as
        flow_matching's ``ODESolver.sample(x, step_size=None, time_grid=sched.as_tensor())``, which then steps
        exactly at them.

        Example:
            >>> Schedule(times=[0.0, 0.5, 1.0], indices=[0, 1, 2], cost=0.0, grid=[0.0, 0.5, 1.0]).as_tensor()
            tensor([0.0000, 0.5000, 1.0000], dtype=torch.float64)
        """
        return torch.tensor(self.times.tolist(), dtype=dtype, device=device)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return (
            np.array_equal(self.times, other.times)
            and np.array_equal(self.indices, other.indices)
            and np.array_equal(self.grid, other.grid)
            and (self.metric, self.solver, self.num_samples, self.fingerprint, self.discount)
            == (other.metric, other.solver, other.num_samples, other.fingerprint, other.discount)
            and self.shape == other.shape
            and self.objective == other.objective
            and self.resampled_from == other.resampled_from
            and self.mu == other.mu
            and self.start == other.start
            and (self.cost == other.cost or (math.isnan(self.cost) and math.isnan(other.cost)))
        )

    __hash__ = None  # type: ignore[assignment]  # holds arrays

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: a format marker and version, then every field (floats round-trip exactly)."""
        doc = make_header(
            SCHEDULE_FORMAT,
            _file_version(self.start, SCHEDULE_VERSION),
            steps=self.steps,
            times=self.times.tolist(),
            indices=self.indices.tolist(),
            grid=self.grid.tolist(),
            cost=None if self.resampled_from is not None else self.cost,
            metric=self.metric,
            solver=self.solver,
            num_samples=self.num_samples,
            fingerprint=self.fingerprint,
            discount=self.discount,
            shape=None if self.shape is None else list(self.shape),
            objective=self.objective,
        )
        if self.start != "zero":
            doc["start"] = self.start
        if self.resampled_from is not None:  # only then: files of searched schedules stay as they were
            doc["resampled_from"] = self.resampled_from
        if self.mu is not None:  # likewise
            doc["mu"] = self.mu
        return doc

    def save(self, path: str | os.PathLike) -> None:
        """Write the schedule as versioned JSON, atomically (temp file beside it, fsync, rename)."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))

    @classmethod
    def from_dict(cls, doc: object, source: str = "schedule") -> Schedule:
        """Rebuild a schedule from ``to_dict``'s document, refusing anything else with a ValueError."""
        check_header(doc, make_header(SCHEDULE_FORMAT, SCHEDULE_VERSION), source, "schedule", oldest=1)
        missing = [key for key in _REQUIRED if key not in doc]
        if missing:
            raise ValueError(f"{source}: missing key(s) {', '.join(missing)}")
        times = _expect_numbers(doc["times"], "times", source)
        grid = _expect_numbers(doc["grid"], "grid", source)
        indices = _expect_numbers(doc["indices"], "indices", source, integers=True)
        resampled_from = doc.get("resampled_from")
        if resampled_from is not None and (
            not isinstance(resampled_from, int) or isinstance(resampled_from, bool)
        ):
            raise ValueError(f"{source}: resampled_from has the wrong type ({type(resampled_from).__name__})")
        for key, kinds in (
            ("cost", (int, float) if resampled_from is None else (type(None),)),
            ("discount", (int, float)),
            ("metric", (str,)),
            ("solver", (str,)),
            ("num_samples", (int, type(None))),
            ("fingerprint", (str, type(None))),
            ("objective", (str,)),
            ("steps", (int,)),
            ("shape", (list, type(None))),
            ("mu", (int, float, type(None))),
            ("start", (str,)),
        ):
            if key in doc and (not isinstance(doc[key], kinds) or isinstance(doc[key], bool)):
                raise ValueError(f"{source}: {key} has the wrong type ({type(doc[key]).__name__})")
        if "steps" in doc and doc["steps"] != len(doc["times"]) - 1:
            raise ValueError(f"{source}: steps = {doc['steps']} but times holds {len(doc['times'])} points")
        cost = math.nan if resampled_from is not None else _number(doc["cost"], "cost", source)
        discount = _number(doc.get("discount", 1.0), "discount", source)
        num_samples = doc.get("num_samples")
        if num_samples is not None and not 1 <= num_samples <= _MAX_NUM_SAMPLES:
            raise ValueError(f"{source}: num_samples must be an integer in [1, 2^53], got {num_samples}")
        shape = doc.get("shape")
        if shape is not None:
            try:
                shape = check_shape(shape)
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
                resampled_from=resampled_from,
                mu=doc.get("mu"),
                start=_start_of(doc, source),
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
        return cls.from_dict(read_json(source, "schedule"), source)


def read_json(source: str, what: str) -> object:
    """The JSON document in file ``source``, read with the schedule files' limits.

    Larger than ``MAX_FILE_BYTES`` (checked before reading, and bounded while reading), not UTF-8, not JSON,
    NaN/Infinity, or nested too deeply: ValueError naming the file (``what``: "schedule", ...).
    """
    with open(source, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        raw = f.read(MAX_FILE_BYTES + 1)  # bounded even if the file grows while being read
    if max(size, len(raw)) > MAX_FILE_BYTES:
        raise ValueError(
            f"{source}: {max(size, len(raw))} bytes, larger than any {what} "
            f"({MAX_FILE_BYTES // 2**20} MiB at most): not a {what} file"
        )
    overflowed: list[str] = []
    try:
        doc = json.loads(
            raw.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_float_noting(overflowed)
        )
    except RecursionError:
        raise ValueError(f"{source}: JSON nested too deeply: not a {what} file") from None
    except (UnicodeDecodeError, ValueError) as err:  # JSONDecodeError, over-long integers
        raise ValueError(f"{source}: not valid JSON (corrupted or truncated?): {err}") from None
    if overflowed:  # e.g. 1e999: JSON allows it, float64 reads it as inf
        raise ValueError(
            f"{source}: {_first_nonfinite_field(doc)} = {overflowed[0]} is beyond float64's range: not a "
            f"{what} file"
        )
    return doc


def _float_noting(overflowed: list[str]) -> Callable[[str], float]:
    """A JSON ``parse_float`` that records the texts of numbers float64 cannot hold (they parse to inf)."""

    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            overflowed.append(text)
        return value

    return parse


def _first_nonfinite_field(doc: object, path: str = "") -> str:
    """The JSON path (``grid[3]``, ``budgets[0].cost``) of the first non-finite float in ``doc``."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        where = f"{path}.{key}".lstrip(".") if isinstance(doc, dict) else f"{path}[{key}]"
        if isinstance(value, float) and not math.isfinite(value):
            return where
        found = _first_nonfinite_field(value, where) if isinstance(value, dict | list) else ""
        if found:
            return found
    return "" if path else "a number"


def _check_cost(cost: object, resampled_from: object) -> float:
    """A searched schedule's finite cost; NaN (unknown) exactly when it was resampled."""
    if resampled_from is None:
        return check_float(cost, "cost")
    check_int(resampled_from, "resampled_from")
    if not isinstance(cost, float) or not math.isnan(cost):
        raise ValueError(f"a resampled schedule's cost is unknown (NaN), got {cost!r}")
    return cost


def _file_version(start: str, latest: int) -> int:
    """The version a file is written in: 1 for a pinned start (no ``start`` key), else ``latest``."""
    return 1 if start == "zero" else latest


def _start_of(doc: dict, source: str) -> str:
    """The start rule of a schedule (or set) document: "zero" for version 1, written before the rule existed;
    from version 2 on the key is required (a missing one is an edit, not an old file)."""
    if doc.get("version") == 1:
        if "start" in doc:
            raise ValueError(f"{source}: a version-1 file has no start rule, but this one holds start")
        return "zero"
    if "start" not in doc:
        raise ValueError(f"{source}: missing key start (the start rule: one of {', '.join(START_RULES)})")
    return doc["start"]


def _format_of(doc: object) -> object:
    return doc.get("format") if isinstance(doc, dict) else None


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
    start: str = "zero",
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
        start=start,
    )


def _check_cost_and_grid(cost: object, grid: object) -> tuple[np.ndarray, np.ndarray]:
    times = as_times(grid, "grid")
    matrix = np.asarray(cost)
    if matrix.shape != (len(times), len(times)):
        raise ValueError(
            f"cost must have shape ({len(times)}, {len(times)}) for {len(times)} grid times, "
            f"got {matrix.shape}"
        )
    return matrix, times


def _solved(
    cost: np.ndarray,
    max_steps: int,
    grid: Sequence[float] | np.ndarray,
    discount: float,
    backend: str,
    described: dict[str, Any],
) -> list[Schedule]:
    """The Bellman DP's schedules of budgets 1 .. ``max_steps`` on ``cost`` (checked), in order;
    ``described``: the fields that say where the matrix came from (metric, solver, num_samples, ...)."""
    matrix, times = _check_cost_and_grid(cost, grid)
    max_steps = check_int(max_steps, "max_steps")
    if max_steps >= len(times):
        raise ValueError(
            f"max_steps must be < len(grid) = {len(times)} (at most {len(times) - 1} steps), got {max_steps}"
        )
    paths = bellman_paths(matrix, max_steps, discount=discount, backend=backend)
    return [_from_path(p, times, discount=discount, **described) for p in paths]


def schedules_from_cost(
    cost: np.ndarray,
    max_steps: int,
    *,
    grid: Sequence[float] | np.ndarray,
    discount: float = 1.0,
    backend: str = "auto",
    metric: str = "l2sq",
    solver: str = "euler",
    num_samples: int | None = None,
    fingerprint: str | None = None,
    shape: Sequence[int] | None = None,
    start: str = "zero",
) -> ScheduleSet:
    """The Bellman-optimal schedule of every budget K = 1 .. ``max_steps`` for a precomputed (N, N) cost
    matrix on ``grid``, from one DP table, as a ``ScheduleSet`` holding the matrix (read one budget as
    ``result[K]``: every budget up to K costs what K alone does).

    No model needed. ``cost``: (N, N), finite and >= 0 above the diagonal (errors; nothing else is read).
    ``grid``: the (N,) grid times the rows and columns stand for. ``max_steps`` in [1, N - 1].
    ``metric``, ``solver``, ``num_samples``, ``fingerprint`` and ``shape`` (one sample's) only describe where
    the matrix came from and are stored in the schedules (objective "local"); ``start``: the schedules' start
    rule (``Schedule.start``).

    Example:
        >>> c = np.triu(np.square(np.subtract.outer(np.arange(5.0), np.arange(5.0))), 1)  # cost (j - i)^2
        >>> sset = schedules_from_cost(c, 2, grid=[0.0, 0.25, 0.5, 0.75, 1.0])
        >>> sset[2].times.tolist(), [s.times.tolist() for s in sset.values()][0]
        ([0.0, 0.5, 1.0], [0.0, 1.0])
    """
    described = {"metric": metric, "solver": solver, "num_samples": num_samples, "fingerprint": fingerprint,
                 "shape": None if shape is None else tuple(shape), "start": start}  # fmt: skip
    return ScheduleSet(_solved(cost, max_steps, grid, discount, backend, described), cost_table=cost)


# ------------------------------------------------------------------------------------ every budget at once

SET_FORMAT = "boss_fast.schedule_set"
SET_VERSION = 2  # 2: the start rule ("start"), written as SCHEDULE_VERSION is (a "zero" set stays version 1)
# Fields every budget of a set shares (one search): checked at construction, stored once in the file.
_SHARED = ("metric", "solver", "num_samples", "fingerprint", "discount", "shape", "objective", "start")
# Shared too, but written only when set (files without them stay as they were).
_OPTIONAL_SHARED = ("mu",)


class ScheduleSet(Mapping[int, Schedule]):
    """Every budget K = 1 .. ``max_steps`` from one search, as a read-only mapping ``{K: Schedule}``.

    ``sset[K]``, ``len(sset)``, ``sset.items()`` work as on a dict. All budgets share one grid and one
    search's fields (metric, solver, num_samples, fingerprint, discount, shape, objective, start).

    Args:
        schedules: the budgets 1 .. max_steps, each once, in any order (none of them resampled).
        cost_table: the local objective's (N, N) cost matrix the budgets were solved on, or None. Only its
            strict upper triangle is kept (the DP reads nothing else; the rest is stored as 0). When given,
            its entries must be finite and >= 0 (errors) and every budget must be the Bellman DP's answer on
            it (checked: a table and schedules that disagree are refused), and :meth:`resample` re-solves it
            for budgets outside the set. The global objective has no such matrix (its DP runs over the
            sampler's own states): None.

    What a loaded file is checked for, exactly (:meth:`from_dict`): its SHA-256 is of the content alone, with
    no key, so it detects corruption and edits that were not re-hashed, never a deliberate edit re-hashed.
    With a cost table the DP check then refuses any re-hashed edit that changes a saved budget: its indices,
    its cost, an entry on its path, or an entry lowered enough to make another path cheaper for it. It
    cannot refuse an edit that keeps every saved budget optimal at the same cost (raising an entry that only
    larger budgets use, e.g. 0 -> 3 times 1000 in a set of K = 1..5 whose K = 6 answer uses it): such a file
    loads, and ``resample(K)`` for K > max_steps answers on the edited table. A global set (no table) has
    the SHA-256 and the consistency of each schedule only.

    Example:
        >>> c = np.triu(np.square(np.subtract.outer(np.arange(5.0), np.arange(5.0))), 1)
        >>> sset = schedules_from_cost(c, 2, grid=np.linspace(0, 1, 5))  # ScheduleSet(schedules, c)
        >>> sorted(sset), sset.resample(3).times.tolist()
        ([1, 2], [0.0, 0.25, 0.5, 1.0])
    """

    def __init__(self, schedules: Iterable[Schedule], cost_table: np.ndarray | None = None) -> None:
        scheds = sorted(schedules, key=lambda s: s.steps if isinstance(s, Schedule) else 0)
        if not scheds or not all(isinstance(s, Schedule) for s in scheds):
            raise TypeError("a ScheduleSet needs one or more Schedule objects")
        budgets = [s.steps for s in scheds]
        if budgets != list(range(1, len(scheds) + 1)):
            raise ValueError(f"a ScheduleSet holds the budgets 1 .. max_steps once each, got {budgets}")
        first = scheds[0]
        for s in scheds:
            if s.resampled_from is not None:
                raise ValueError(f"budget {s.steps} was resampled; a ScheduleSet holds searched budgets only")
            if not np.array_equal(s.grid, first.grid):
                raise ValueError(f"budget {s.steps} is on another grid than budget 1 (one search, one grid)")
            for name in (*_SHARED, *_OPTIONAL_SHARED):
                if getattr(s, name) != getattr(first, name):
                    raise ValueError(
                        f"budget {s.steps} has {name} = {getattr(s, name)!r} but budget 1 has "
                        f"{getattr(first, name)!r} (a set comes from one search)"
                    )
        self._scheds = {s.steps: s for s in scheds}
        self._table = None if cost_table is None else self._check_table(cost_table)

    def _check_table(self, cost_table: object) -> np.ndarray:
        first = self._scheds[1]
        if first.objective != "local":
            raise ValueError(
                "cost_table is the local objective's cost matrix; a global set has none (its DP runs over "
                "the sampler's own states)"
            )
        matrix, _ = _check_cost_and_grid(cost_table, first.grid)
        table = np.triu(np.asarray(matrix, dtype=np.float64), 1)
        if not np.all(np.isfinite(table)):
            raise ValueError("cost_table holds non-finite values above the diagonal")
        if np.any(table < 0.0):  # errors (l2sq, l2) are >= 0; a negative one is an edit or another objective
            i, j = (int(a[0]) for a in np.nonzero(table < 0.0))
            raise ValueError(
                f"cost_table[{i}, {j}] = {float(table[i, j])!r} is negative; costs are errors, >= 0"
            )
        solved = _solved(table, len(self._scheds), first.grid, first.discount, "auto", _described(first))
        for s, fresh in zip(self._scheds.values(), solved, strict=True):
            if not np.array_equal(s.indices, fresh.indices) or not math.isclose(
                s.cost, fresh.cost, rel_tol=1e-12, abs_tol=0.0
            ):
                raise ValueError(
                    f"budget {s.steps} is not the Bellman DP's answer on cost_table (indices "
                    f"{s.indices.tolist()}, cost {s.cost!r}; the table gives {fresh.indices.tolist()}, "
                    f"{fresh.cost!r})"
                )
        table.setflags(write=False)
        return table

    # -- the mapping --------------------------------------------------------------------------------------

    def __getitem__(self, steps: int) -> Schedule:
        try:
            return self._scheds[steps]
        except (KeyError, TypeError):
            raise KeyError(
                f"no {steps!r}-step schedule in this set (it holds K = 1 .. {self.max_steps}); "
                "resample(K) gives another budget"
            ) from None

    def __iter__(self) -> Iterator[int]:
        return iter(self._scheds)

    def __len__(self) -> int:
        return len(self._scheds)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScheduleSet):
            return NotImplemented
        tables = (self._table is None and other._table is None) or (
            self._table is not None and other._table is not None and np.array_equal(self._table, other._table)
        )
        return tables and list(self.values()) == list(other.values())

    __hash__ = None  # type: ignore[assignment]  # holds arrays

    def __repr__(self) -> str:
        table = "with" if self._table is not None else "without"
        return (
            f"ScheduleSet(K = 1..{self.max_steps}, {self.objective} objective, grid of {len(self.grid)} "
            f"points, {table} cost table)"
        )

    @property
    def max_steps(self) -> int:
        return len(self._scheds)

    @property
    def grid(self) -> np.ndarray:
        return self._scheds[1].grid

    @property
    def objective(self) -> str:
        return self._scheds[1].objective

    @property
    def cost_table(self) -> np.ndarray | None:
        """The local objective's cost matrix (strict upper triangle, read-only), or None."""
        return self._table

    # -- budgets outside the set --------------------------------------------------------------------------

    def resample(self, steps: int) -> Schedule:
        """A ``steps``-step schedule for any budget 1 <= K <= N - 1, in the set or not.

        - K in the set: ``self[K]``.
        - A set with a cost table (the local objective): the Bellman DP on that table, exactly what a fresh
          search with the same noises would return (same table, same DP).
        - Otherwise (the global objective; a local set saved without its table): no model is run, so the
          nearest budget's times are interpolated, :func:`interpolate_schedule` (log-linear in sigma over a
          normalised index, as Align-Your-Steps does, snapped to the grid); the result's
          ``resampled_from`` names that budget and its cost is NaN. README "Schedule sets" measures how far
          this is from a fresh search.
        """
        steps = check_int(steps, "steps")
        if steps in self._scheds:
            return self._scheds[steps]
        first = self._scheds[1]
        if steps >= len(self.grid):
            raise ValueError(
                f"steps must be < the grid's {len(self.grid)} points (at most {len(self.grid) - 1}), "
                f"got {steps}"
            )
        if self._table is not None:
            fresh = _solved(self._table, steps, self.grid, first.discount, "auto", _described(first))[-1]
            return replace(fresh, mu=first.mu)
        sources = [k for k in self._scheds if k >= 2]
        if not sources:
            raise ValueError(
                "this set holds only the 1-step schedule and no cost table: there is nothing to interpolate "
                "(search with max_steps >= 2)"
            )
        nearest = min(sources, key=lambda k: (abs(k - steps), -k))  # ties: the larger budget
        return interpolate_schedule(self._scheds[nearest], steps)

    # -- the file -----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: format, version, the shared fields and grid once, every budget's indices and
        cost, the cost table's strict upper triangle (row-major) or null, and a SHA-256 of the rest."""
        first = self._scheds[1]
        doc: dict[str, Any] = make_header(
            SET_FORMAT, _file_version(first.start, SET_VERSION), max_steps=self.max_steps
        )
        doc.update(
            {name: getattr(first, name) for name in _SHARED if name != "start" or first.start != "zero"}
        )
        doc["shape"] = None if first.shape is None else list(first.shape)
        doc.update(
            {name: getattr(first, name) for name in _OPTIONAL_SHARED if getattr(first, name) is not None}
        )
        doc["grid"] = self.grid.tolist()
        doc["budgets"] = [
            {"steps": s.steps, "indices": s.indices.tolist(), "cost": s.cost} for s in self.values()
        ]
        upper = None if self._table is None else self._table[np.triu_indices(len(self.grid), 1)].tolist()
        doc["cost_table_upper"] = upper
        doc["sha256"] = content_digest(doc)
        return doc

    def save(self, path: str | os.PathLike) -> None:
        """Write the set as versioned JSON, atomically (temp file beside it, fsync, rename).

        The size is about 24 bytes per cost-table entry, N (N - 1) / 2 of them: 0.12 MB for the default
        grid (N = 101), 12 MB for N = 1001. A set whose file would exceed the readers' 64 MiB limit is
        refused here (ValueError) rather than written unreadable: save ``ScheduleSet(sset.values())``
        (no table; resample then interpolates) or search on a coarser grid.
        """
        text = json.dumps(self.to_dict(), indent=None, allow_nan=False) + "\n"
        data = text.encode("utf-8")
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(
                f"this schedule set would take {len(data) / 2**20:.1f} MiB (a cost table on a grid of "
                f"{len(self.grid)} points), over the {MAX_FILE_BYTES // 2**20} MiB any reader accepts; "
                "save ScheduleSet(sset.values()) without the table, or search on a coarser grid"
            )
        atomic_write(path, lambda f: f.write(data))

    @classmethod
    def from_dict(cls, doc: object, source: str = "schedule set") -> ScheduleSet:
        """Rebuild a set from ``to_dict``'s document; anything else (a foreign, corrupted or inconsistent
        document: format, version, checksum, keys, types, a negative or non-finite table entry, a budget
        that is not the DP's answer on the table) is refused with a ValueError naming the field. A re-hashed
        edit that keeps every saved budget optimal cannot be told from a search (class docstring)."""
        hint = " (a single schedule: use Schedule.load)" if _format_of(doc) == SCHEDULE_FORMAT else ""
        check_header(doc, make_header(SET_FORMAT, SET_VERSION), source, "schedule set", oldest=1, hint=hint)
        required = ("budgets", "grid", "cost_table_upper", "sha256", *(k for k in _SHARED if k != "start"))
        missing = [k for k in required if k not in doc]
        if missing:
            raise ValueError(f"{source}: missing key(s) {', '.join(missing)}")
        if doc["sha256"] != content_digest(doc):
            raise ValueError(f"{source}: sha256 does not match the content (edited or corrupted)")
        budgets = doc["budgets"]
        if not isinstance(budgets, list) or not budgets or not all(isinstance(b, dict) for b in budgets):
            raise ValueError(f"{source}: budgets must be a non-empty list of objects")
        grid = _expect_numbers(doc["grid"], "grid", source)
        shared = {k: doc[k] for k in _SHARED if k != "start"}
        shared["start"] = _start_of(doc, source)
        shared.update({k: doc[k] for k in _OPTIONAL_SHARED if k in doc})
        scheds = []
        for b in budgets:
            indices = _expect_numbers(b.get("indices"), "budgets[].indices", source, integers=True)
            if np.any(indices < 0) or np.any(indices >= len(grid)):
                raise ValueError(f"{source}: budgets[].indices outside the grid's {len(grid)} points")
            one = dict(shared, format=SCHEDULE_FORMAT, version=SCHEDULE_VERSION, steps=b.get("steps"))
            one.update(
                times=grid[indices].tolist(), indices=indices.tolist(), grid=doc["grid"], cost=b.get("cost")
            )
            scheds.append(Schedule.from_dict(one, f"{source}: budget {b.get('steps')!r}"))
        table = None
        if doc["cost_table_upper"] is not None:
            upper = _expect_numbers(doc["cost_table_upper"], "cost_table_upper", source)
            n = len(grid)
            if len(upper) != n * (n - 1) // 2:
                raise ValueError(f"{source}: cost_table_upper holds {len(upper)} numbers, not N (N - 1) / 2")
            table = np.zeros((n, n))
            table[np.triu_indices(n, 1)] = upper
        try:
            return cls(scheds, cost_table=table)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: inconsistent schedule set: {err}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> ScheduleSet:
        """Read a set written by ``save``, with ``Schedule.load``'s limits (64 MiB checked before reading,
        nesting, finite numbers) and ``from_dict``'s checks; a missing file or a directory raises OSError."""
        source = os.fspath(path)
        return cls.from_dict(read_json(source, "schedule set"), source)


def _described(sched: Schedule) -> dict[str, Any]:
    """The fields of ``sched`` that say where its cost matrix came from (``_solved``'s ``described``)."""
    return {
        name: getattr(sched, name)
        for name in ("metric", "solver", "num_samples", "fingerprint", "shape", "start")
    }


def loglinear_times(times: np.ndarray, steps: int) -> np.ndarray:
    """``steps`` + 1 times interpolated from a schedule's ``times`` (K + 1 >= 3 of them), log-linear in sigma.

    As Align-Your-Steps resamples its tables: sigma_i = 1 - times[i], i = 0 .. K - 1 (all > 0) placed at
    i / (K - 1); log sigma interpolated linearly at j / (steps - 1), j = 0 .. steps - 1; the last time
    (sigma 0 when the schedule ends at t = 1, where log sigma is -inf) is appended as it is. The first and
    last times are kept exactly. Not snapped to any grid.
    """
    sigmas = 1.0 - np.asarray(times, dtype=np.float64)
    k = len(sigmas) - 1
    log_s = np.log(sigmas[:-1])
    new = np.exp(np.interp(np.linspace(0.0, 1.0, steps), np.linspace(0.0, 1.0, k), log_s))
    out = np.concatenate([1.0 - new, times[-1:]])
    out[0] = times[0]
    return out


def snap_to_grid(grid: np.ndarray, targets: np.ndarray, pin_first: bool = True) -> np.ndarray:
    """Indices of the grid points nearest to ``targets`` (K + 1 times), made strictly increasing up to
    N - 1, from 0 with ``pin_first`` (else from the point nearest ``targets[0]``, for a schedule whose start
    is free): each index is pushed up past its predecessor, then down below its successor (K <= N - 1)."""
    n, k = len(grid), len(targets) - 1
    right = np.clip(np.searchsorted(grid, targets), 1, n - 1)
    idx = np.where(np.abs(grid[right - 1] - targets) <= np.abs(grid[right] - targets), right - 1, right)
    idx[-1] = n - 1
    if pin_first:
        idx[0] = 0
    for j in range(1, k):  # idx[k] stays N - 1
        idx[j] = max(idx[j], idx[j - 1] + 1)
    for j in range(k - 1, -1, -1):
        idx[j] = min(idx[j], idx[j + 1] - 1)
    return idx.astype(np.int64)


def interpolate_schedule(sched: Schedule, steps: int) -> Schedule:
    """A ``steps``-step schedule interpolated from ``sched`` (no model run): :func:`loglinear_times`, then
    snapped to ``sched.grid`` (:func:`snap_to_grid`) so it stays a subset of the grid like every Schedule.

    The result has ``resampled_from = sched.steps`` and cost NaN (unknown). ``sched`` needs K >= 2 and
    ``steps`` must be in [2, N - 1].

    Example:
        >>> grid = np.linspace(0.0, 1.0, 11)
        >>> sched = Schedule(times=grid[[0, 5, 8, 10]], indices=np.array([0, 5, 8, 10]), cost=0.1, grid=grid)
        >>> k4 = interpolate_schedule(sched, 4)
        >>> k4.indices.tolist(), k4.resampled_from
        ([0, 4, 6, 8, 10], 3)
    """
    if not isinstance(sched, Schedule):
        raise TypeError(
            f"sched must be a Schedule (the result is snapped to its grid), got {type(sched).__name__}"
        )
    steps = check_int(steps, "steps")
    if sched.steps < 2:
        raise ValueError("interpolation needs a schedule of at least 2 steps (a 1-step one has no shape)")
    if not 2 <= steps <= len(sched.grid) - 1:
        raise ValueError(f"steps must be in [2, {len(sched.grid) - 1}] on this grid, got {steps}")
    indices = snap_to_grid(sched.grid, loglinear_times(sched.times, steps), pin_first=sched.start == "zero")
    return replace(
        sched, times=sched.grid[indices], indices=indices, cost=math.nan, resampled_from=sched.steps
    )


def read_schedule_file(path: str | os.PathLike) -> Schedule | ScheduleSet:
    """The schedule or the schedule set in the JSON file ``path`` (``Schedule.save`` / ``ScheduleSet.save``).

    Raises:
        ValueError: naming the file: neither format, or a document its reader refuses (edited, truncated,
            over 64 MiB, ...).
        OSError: a missing file or a directory.
    """
    source = os.fspath(path)
    doc = read_json(source, "schedule")
    kind = doc.get("format") if isinstance(doc, dict) else None
    if kind == SET_FORMAT:
        return ScheduleSet.from_dict(doc, source)
    if kind == SCHEDULE_FORMAT:
        return Schedule.from_dict(doc, source)
    raise ValueError(f"{source}: neither a boss_fast schedule nor a schedule set (format {kind!r})")


def max_budget(source: Schedule | ScheduleSet) -> int:
    """The largest K :func:`schedule_for_steps` gives for ``source``: a schedule's own K; a set with a cost
    table, its grid points - 1 (the DP re-solves any K below the grid's size); a set without one (the global
    objective), its largest budget."""
    if isinstance(source, Schedule):
        return source.steps
    return source.max_steps if source.cost_table is None else len(source.grid) - 1


def schedule_for_steps(
    source: Schedule | ScheduleSet, steps: int, where: str = "the file", name: str = "steps"
) -> Schedule:
    """The ``steps``-step schedule of a schedule or a set: the one rule ``boss-fast sigmas --steps K`` and the
    ComfyUI node share, so the two give the same sigmas for every K, and each is what a search gives.

    - A single schedule: only its own K (it holds no other budget).
    - A set: a K it holds is that schedule; a larger K up to :func:`max_budget` is ``resample``'s DP
      re-solved on the set's cost table, exactly what a fresh search with the same noises returns. A set
      without a table (the global objective) would only interpolate, which docs/limitations.md measures
      worse than uniform steps at K = 10 from a K <= 6 set: refused, as is a K beyond the grid.

    ``where``: the file's name and ``name`` the caller's name for ``steps`` (``--steps``), for the messages.

    Raises:
        TypeError: ``steps`` is not an integer.
        ValueError: ``steps`` < 1, above :func:`max_budget`, or not a single schedule's own K.
    """
    steps = check_int(steps, name)
    if isinstance(source, Schedule):
        if steps != source.steps:
            raise ValueError(
                f"{name} {steps}: {where} is a {source.steps}-step schedule (a schedule set gives other "
                "budgets)"
            )
        return source
    top = max_budget(source)
    if steps > top and source.cost_table is None:
        raise ValueError(
            f"{name} {steps}: {where} holds K = 1..{top} and no cost table (a global-objective set), so "
            "another K could only be interpolated, which can be worse than uniform steps: search with "
            f"max_steps >= {steps}"
        )
    if steps > top:
        raise ValueError(
            f"{name} {steps}: {where} gives K = 1..{top} (K = {source.max_steps + 1}..{top} re-solved on its "
            f"cost table; its grid has {len(source.grid)} points)"
        )
    return source.resample(steps)
