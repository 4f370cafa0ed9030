"""Polishing a searched schedule on the error users see: moves of its knots, one grid point at a time, each
kept only when it lowers the mean endpoint error against the search's own teacher on the search's own noises.

Why. The own-state DP (``boss_fast.global_objective``) keeps one state per (level, grid point), so it is
greedy in the past. With a free start (``start="noise"``, "scaled") its level 1 keeps, for each grid point
j, the start whose ONE step lands closest to the teacher at t_j, not the start whose K steps end closest at
t = 1; the start knots it picks come out early. Measured on the bundled digits DiT (256 search noises, the
full DP, 100-step grid, held-out RMSE against dopri5 on 1000 other noises): moving only the start knot by this
rule takes K = 4 from 0.1375 to 0.1033 and K = 10 from 0.0630 to 0.0484
(benchmarks/results/search_budget_digits_dit.md).

The moves. For each knot to polish (``knots``: "start", the first knot only, with a free start; "all",
every knot but the last, the first one only with a free start), a pattern search: try the next grid point
up; while a move lowers the error, keep going up; if the first move up did not help, the same downward.
A knot stays strictly between its neighbours (the start within 0 .. ``start_cap``). With "all", sweeps
over the knots repeat until a sweep moves none or ``max_sweeps`` ran. Every probe is a K-step Euler
sampling of every search noise from the rule's start state (the one the schedule will be sampled from),
its squared endpoint error against the teacher's endpoint summed in float64 and all-reduced over the ranks,
so every rank takes the same moves, and the result depends on the batching only through summation order.

Cost, per noise: K evaluations for the unmoved schedule, then K - m per probe of knot m, plus m to reach
knot m's predecessor (with its velocity) once per visit when m >= 1. The number of probes depends on the
model: each knot takes (moves + 1) probes in the direction that helped, plus 1 when up did not help.
``PolishResult.evaluations`` counts them exactly; :func:`polish_bound` bounds them before the work.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from boss_fast._checkpoint import stored_array, stored_count
from boss_fast._validation import METRICS, START_RULES, check_choice, check_int
from boss_fast.bellman import BellmanPath
from boss_fast.engine import Checkpoint, Shard, WideEvaluator, progress_bar, resolve_wide_mode
from boss_fast.global_objective import GlobalPass, GlobalTable, global_paths, start_sources
from boss_fast.ode import euler_update, start_state

__all__ = ["POLISHES", "EndpointProbe", "PolishResult", "polish", "polish_bound", "polish_paths"]

# "none": the DP's schedule as it is; "start": the start knot (a free start only); "all": every knot.
POLISHES: tuple[str, ...] = ("none", "start", "all")
# A knot moves at most REACH grid points per sweep (the largest start move measured on the bundled models was
# 18, gmm2d_narrow from 64 noises; most were 1-8), and "all" sweeps at most MAX_SWEEPS times.
REACH = 16
MAX_SWEEPS = 4


@dataclass(frozen=True)
class PolishResult:
    """indices: (K + 1,) int64 grid indices after the moves; error: their mean endpoint error on the search
    noises (the metric's); evaluations: model evaluations per noise spent; moves: knot moves kept."""

    indices: np.ndarray
    error: float
    evaluations: int
    moves: int


class EndpointProbe:
    """The mean endpoint error of Euler schedules over this rank's noise batches, all-reduced.

    ``probe(times)`` samples every noise from ``start_state(noise, rule, times[0])`` over ``times`` and
    returns the mean over all noises of ``||x(1) - endpoint||^2`` ("l2sq"; "l2": of the norm) in float64;
    ``probe(times, from_state=m)`` starts from the states ``advance`` left at knot ``m - 1`` instead (their
    velocity there already evaluated), jumping straight to ``times[0]``. ``evaluations`` counts model
    evaluations per noise. ``endpoints[i]``: batch i's teacher endpoints (this rank's batches in order).
    """

    def __init__(self, velocity: Callable, make_batch: Callable[[int, int], torch.Tensor], shard: Shard,
                 endpoints: Sequence[torch.Tensor], rule: str, metric: str, evaluator: WideEvaluator,
                 device: torch.device) -> None:  # fmt: skip
        self.make_batch, self.shard, self.endpoints = make_batch, shard, list(endpoints)
        self.rule = check_choice(rule, START_RULES, "start")
        self.metric = check_choice(metric, METRICS, "metric")
        self.evaluator, self.device = evaluator, device
        self.evaluations = 0
        self._prefix: list[tuple[torch.Tensor, torch.Tensor, float]] | None = None
        self._rows = [torch.arange(*shard.span(b), device=device) for b in shard.mine]

    @classmethod
    def of_table(cls, velocity: Callable, make_batch: Callable[[int, int], torch.Tensor], table: GlobalTable,
                 run: GlobalPass, device: torch.device) -> EndpointProbe:  # fmt: skip
        """The probe over this process's shard of ``table``'s noises, against its teacher endpoints, with
        ``run``'s batch size, wide-call mode, start rule and metric."""
        if table.endpoints is None:
            raise ValueError(
                "an endpoint probe needs the teacher's endpoints: run the DP with keep_endpoints=True"
            )
        shard = Shard.of_this_process(table.num_samples, run.batch_size)
        evaluator = WideEvaluator(velocity, run.batch_size, resolve_wide_mode(run.mode, device))
        return cls(velocity, make_batch, shard, table.endpoints, run.start, run.metric, evaluator, device)

    def _noise(self, i: int) -> torch.Tensor:
        return self.make_batch(*self.shard.span(self.shard.mine[i])).to(self.device)

    def _velocity(self, x: torch.Tensor, t: float, i: int, part: slice | None = None) -> torch.Tensor:
        out = torch.empty_like(x)
        times = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        self.evaluator(x, times, self._rows[i] if part is None else self._rows[i][part], out)
        return out

    def _run(self, x: torch.Tensor, times: list[float], i: int, part: slice | None = None) -> torch.Tensor:
        for a, b in zip(times[:-1], times[1:], strict=True):
            x = euler_update(x, self._velocity(x, a, i, part), b - a)
        return x

    def _squared(
        self, x: torch.Tensor, times: list[float], i: int, part: slice | None = None
    ) -> torch.Tensor:
        """(B,) float64 on the device: each sample's squared endpoint error after Euler steps over ``times``
        from ``x`` (batch i, its rows ``part``)."""
        end = self.endpoints[i] if part is None else self.endpoints[i][part]
        diff = self._run(x, times, i, part).to(torch.float64) - end.to(torch.float64)
        return diff.flatten(1).square().sum(dim=1)

    @torch.no_grad()
    def per_noise(self, times: Sequence[float], lo: int, hi: int) -> np.ndarray:
        """(hi - lo,) float64: each noise's squared endpoint error for noises lo .. hi - 1 (global rows) on
        ``times``, from every rank (each fills its own rows; one all-reduce). K evaluations per noise of the
        range, counted in ``evaluations`` per noise of the range."""
        hosts = [float(t) for t in times]
        out = np.zeros(hi - lo)
        for i, b in enumerate(self.shard.mine):
            start, stop = self.shard.span(b)
            a, e = max(start, lo), min(stop, hi)
            if a >= e:
                continue
            part = slice(a - start, e - start)
            x = start_state(self._noise(i)[part], self.rule, hosts[0])
            out[a - lo : e - lo] = self._squared(x, hosts, i, part).cpu().numpy()
        self.evaluations += len(hosts) - 1
        return self.shard.reduce(out, 0)[0]

    @torch.no_grad()
    def advance(self, times: Sequence[float]) -> None:
        """Keep each batch's state at ``times[-1]`` after Euler steps over ``times`` and its velocity there
        (``len(times)`` evaluations per noise), for ``probe(..., from_state=...)``."""
        hosts = [float(t) for t in times]
        self._prefix = []
        for i in range(len(self.shard.mine)):
            x = self._run(start_state(self._noise(i), self.rule, hosts[0]), hosts, i)
            self._prefix.append((x, self._velocity(x, hosts[-1], i), hosts[-1]))
        self.evaluations += len(hosts)

    @torch.no_grad()
    def probe(self, times: Sequence[float], from_state: bool = False) -> float:
        hosts = [float(t) for t in times]
        total, count = torch.zeros((), dtype=torch.float64, device=self.device), 0
        for i in range(len(self.shard.mine)):
            if from_state:
                x0, v0, t0 = self._prefix[i]
                x = euler_update(x0, v0, hosts[0] - t0)
            else:
                x = start_state(self._noise(i), self.rule, hosts[0])
            per = self._squared(x, hosts, i)
            total += (per if self.metric == "l2sq" else per.sqrt()).sum()
            count += x.shape[0]
        self.evaluations += len(hosts) - 1
        sums, count = self.shard.reduce(np.array([total.item()]), count)  # one host read per probe
        return float(sums[0]) / count


def _line(
    probe: Callable[[int], float], at: int, lo: int, hi: int, best: float, reach: int
) -> tuple[int, float, int]:
    """Pattern search of one knot between lo and hi from ``at`` (error ``best``), at most ``reach`` moves:
    (position, error, moves); at most reach + 1 probes."""
    for step in (1, -1):
        moves, p = 0, at + step
        while lo <= p <= hi and moves < reach:
            err = probe(p)
            if not err < best:
                break
            at, best, moves, p = p, err, moves + 1, p + step
        if moves:
            return at, best, moves
    return at, best, 0


def polish(probe: EndpointProbe, grid: np.ndarray, indices: np.ndarray, knots: str, start_cap: int,
           max_sweeps: int = MAX_SWEEPS, reach: int = REACH) -> PolishResult:  # fmt: skip
    """Polish one schedule (``grid[indices]``) by :class:`EndpointProbe` (see the module docstring).

    ``knots``: "start" or "all" (``POLISHES``; "none" is the caller's); ``start_cap``: the last grid point
    the start may take (-1: the start is pinned, rule "zero"); ``max_sweeps`` bounds "all"'s sweeps and
    ``reach`` each knot's moves per sweep.
    """
    check_choice(knots, POLISHES[1:], "polish")
    check_int(max_sweeps, "max_sweeps")
    check_int(reach, "reach")
    idx = np.array(indices, dtype=np.int64)
    spent = probe.evaluations
    best = probe.probe(grid[idx])
    first = 0 if start_cap >= 0 else 1  # a pinned start (-1) does not move
    movable = [m for m in ([0] if knots == "start" else range(len(idx) - 1)) if m >= first]
    moves = 0
    for _ in range(max_sweeps if knots == "all" else 1):
        moved = 0
        for m in movable:
            if m >= 1:
                probe.advance(grid[idx[:m]])

            def trial(p: int, m: int = m) -> float:
                return probe.probe(grid[np.concatenate([[p], idx[m + 1 :]])], from_state=m >= 1)

            lo = idx[m - 1] + 1 if m else 0
            hi = min(idx[m + 1] - 1, start_cap) if m == 0 else idx[m + 1] - 1
            idx[m], best, n = _line(trial, int(idx[m]), int(lo), int(hi), best, reach)
            moved += n
        moves += moved
        if not moved:
            break
    return PolishResult(indices=idx, error=best, evaluations=probe.evaluations - spent, moves=moves)


def polish_bound(
    steps: int, knots: str, pinned: bool, max_sweeps: int = MAX_SWEEPS, reach: int = REACH
) -> int:
    """At most how many model evaluations per noise :func:`polish` spends on one ``steps``-step schedule: K
    for the unmoved schedule, then per sweep and knot m its predecessor (m, for m >= 1) and at most
    reach + 1 probes of K - m each. A bound for the bill before the work; the search reports the exact count
    (on the bundled models about a third to a half of it).

    Example:
        >>> polish_bound(4, "start", pinned=False), polish_bound(4, "none", pinned=False)
        (72, 0)
    """
    check_choice(knots, POLISHES, "polish")
    if knots == "none" or (knots == "start" and pinned):
        return 0
    ms = [0] if knots == "start" else list(range(1 if pinned else 0, steps))
    sweeps = 1 if knots == "start" else max_sweeps
    return steps + sweeps * sum(m + (reach + 1) * (steps - m) for m in ms)


# ------------------------------------------------------------------------------------ every budget at once

CHECKPOINT_FORMAT = "boss_fast.polish_checkpoint"
CHECKPOINT_VERSION = 1


def _resume(ckpt: Checkpoint | None, max_steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(indices (max_steps, max_steps + 1) -1-padded, errors, evaluations, budgets done) so far."""
    indices = np.full((max_steps, max_steps + 1), -1, dtype=np.int64)
    errors, spent = np.full(max_steps, np.inf), np.zeros(max_steps, dtype=np.int64)
    stored = None if ckpt is None else ckpt.load()
    if stored is None:
        return indices, errors, spent, 0
    what = "polish checkpoint"
    indices = stored_array(stored, "indices", indices.shape, np.int64, ckpt.path, what)
    errors = stored_array(stored, "errors", errors.shape, np.float64, ckpt.path, what)
    spent = stored_array(stored, "evaluations", spent.shape, np.int64, ckpt.path, what)
    done = stored_count(stored, "budgets_done", ckpt.path, what)
    if not 0 <= done <= max_steps:
        raise ValueError(f"{what} {ckpt.path}: budgets_done = {done} is outside 0 .. {max_steps}")
    return indices, errors, spent, done


def polish_paths(
    velocity: Callable,
    make_batch: Callable[[int, int], torch.Tensor],
    table: GlobalTable,
    run: GlobalPass,
    knots: str,
    *,
    device: torch.device,
    progress: bool,
    checkpoint: str | os.PathLike | None,
    identity: dict[str, str],
) -> list[tuple[BellmanPath, int]]:
    """Every budget's path of ``table`` (``global_paths``) polished by :func:`polish` against
    ``table.endpoints`` on the same noises: [(path with its polished indices and error, evaluations per
    noise)] for K = 1 .. table.max_steps. ``run``: the DP's batch size, metric, mode, start rule and cap.

    With ``checkpoint`` (the DP's path; this pass writes ``<root>.polish<ext>``) the result is saved after
    every budget and a rerun resumes after the last one saved (same moves: every probe is deterministic).
    """
    check_choice(knots, POLISHES[1:], "polish")
    probe = EndpointProbe.of_table(velocity, make_batch, table, run, device)
    n = len(table.times)
    cap = -1 if run.start == "zero" else int(start_sources(run.start, n, run.start_cap)[-1])
    path = None
    if checkpoint is not None:
        root, ext = os.path.splitext(os.fspath(checkpoint))
        path = f"{root}.polish{ext}"
    header = {"times": table.times, "max_steps": table.max_steps, "metric": run.metric, "start": run.start,
              "start_cap": cap, "polish": knots, "reach": REACH, "max_sweeps": MAX_SWEEPS,
              "num_samples": table.num_samples, "dp_costs": table.costs, **identity}  # fmt: skip
    ckpt = Checkpoint.open(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, header, "polish checkpoint")
    indices, errors, spent, done = _resume(ckpt, table.max_steps)
    done = probe.shard.min_over_ranks(done)
    out = []
    with progress_bar(table.max_steps, done, progress, "polish", unit="budget") as bar:
        for k, found in enumerate(global_paths(table), start=1):
            if k > done:
                r = polish(probe, table.times, found.indices, knots, cap)
                indices[k - 1, : k + 1], errors[k - 1], spent[k - 1] = r.indices, r.error, r.evaluations
                if ckpt is not None:
                    ckpt.save(indices=indices, errors=errors, evaluations=spent, budgets_done=np.int64(k))
                bar.update(1)
            out.append((BellmanPath(indices=indices[k - 1, : k + 1].copy(), cost=float(errors[k - 1])),
                        int(spent[k - 1])))  # fmt: skip
    return out
