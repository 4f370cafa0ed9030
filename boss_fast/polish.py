"""Polishing a searched schedule on the error users see: moves of its knots by a few grid points, each kept
only when it lowers the mean endpoint error against the search's own teacher on the search's own noises.

Why. The own-state DP (``boss_fast.global_objective``) keeps one state per (level, grid point), so it is
greedy in the past. With a free start (``start="noise"``, "scaled") its level 1 keeps, for each grid point
j, the start whose ONE step lands closest to the teacher at t_j, not the start whose K steps end closest at
t = 1; the start knots it picks come out early. Measured on the bundled digits DiT (256 search noises, the
full DP, 100-step grid, held-out RMSE against dopri5 on 1000 other noises): moving only the start knot by this
rule (the one-point search of the first version) took K = 4 from 0.1375 to 0.1033 and K = 10 from 0.0630
to 0.0484 (benchmarks/results/search_budget_digits_dit.md at commit d4ebaa8).

The moves. For each knot to polish (``knots``: "start", the first knot only, with a free start; "all",
every knot but the last, the first one only with a free start), a ladder search with a fixed number of
probes: for each rung d of ``ladder`` (default :data:`LADDER` = (4, 2, 1)), probe the knot d grid points
down and d up from where it stands and move it to the best of the three. It reaches any move of up to 7 grid
points in 6 probes, where the one-point pattern search it replaced took a probe per point moved, a count
that depended on the model. A knot stays strictly between its neighbours (the start within 0 ..
``start_cap``): a probe outside is skipped. With "all", sweeps over the knots repeat until a sweep moves
none or ``max_sweeps`` ran. Every probe is a K-step Euler sampling of the probed noises from the rule's start
state (the one the schedule will be sampled from), its squared endpoint error against the teacher's
endpoint summed in float64 and all-reduced over the ranks, so every rank takes the same moves, and the
result depends on the batching only through summation order. A move is kept only when it lowers the error,
so the polished schedule is the best one the ladder probed.

Which noises. :func:`polish_paths` probes the first half of the search noises (:data:`SHARE`; at least
:data:`MIN_PROBED` = 128 of them, or all), then samples each moved schedule once on the rest and keeps it
only where its error on all the noises is below the DP's; budgets of at most :data:`WHOLE_UP_TO` = 2 steps,
whose probes cost least, are probed on all of them. Against the one-point search on all the noises it
replaced (docs/results.md, "The default search"): about half the polish's evaluations at 256 noises, no worse
than the full DP without polish at any K on the three bundled models (search seed 0), the digits' K = 4
0.1070 against that search's 0.1016 (the start moved 10 grid points there).

Cost, per probed noise: K evaluations for the unmoved schedule, then 2 x len(ladder) probes of K - m
evaluations per visit of knot m, plus m to reach knot m's predecessor (with its velocity) when m >= 1: for
"start" 7K per budget, 385 for every K <= 10; then K per noise of the other half where the knot moved. Fixed,
so :func:`polish_rows` is what a search spends, less the probes that fall outside the knot's range and the
checks of the budgets that did not move; ``PolishResult.evaluations`` counts the probes exactly.
"""

from __future__ import annotations

import math
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

__all__ = [
    "LADDER",
    "MIN_PROBED",
    "POLISHES",
    "SHARE",
    "WHOLE_UP_TO",
    "EndpointProbe",
    "PolishResult",
    "polish",
    "polish_bound",
    "polish_paths",
    "polish_rows",
    "polish_samples",
    "probed_on",
]

# "none": the DP's schedule as it is; "start": the start knot (a free start only); "all": every knot.
POLISHES: tuple[str, ...] = ("none", "start", "all")
# The ladder's rungs (grid points): a knot moves by at most their sum, 7, per sweep. Wider ladders ((6, 3, 1),
# (8, 4, 2, 1)) reached the digits' K = 4 move of 10 but did worse on held-out noises elsewhere (they fit the
# search noises: docs/results.md); "all" sweeps at most MAX_SWEEPS times.
LADDER: tuple[int, ...] = (4, 2, 1)
MAX_SWEEPS = 4
# The probes run on the first SHARE of the search noises, but on no fewer than MIN_PROBED (or all of them); a
# budget whose knots moved is then sampled once on the rest, and the moves are kept only where they also lower
# the error on all the noises. 64 probed noises were too few: the digits' 128-noise search lost K = 8 0.0594
# -> 0.0642 probed on 64. Budgets of at most WHOLE_UP_TO steps are probed on all the noises: their probes
# cost at most 2 evaluations a noise (21 of the 385 per noise for every K <= 10), and on half the noises the
# digits' K = 2 start missed the move all of them make (search seed 4: RMSE 0.1710 against 0.1692).
SHARE = 0.5
MIN_PROBED = 128
WHOLE_UP_TO = 2


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
                 run: GlobalPass, device: torch.device,
                 samples: int | None = None) -> EndpointProbe:  # fmt: skip
        """The probe over this process's shard of ``table``'s first ``samples`` noises (None: all), against
        their teacher endpoints, with ``run``'s batch size, wide-call mode, start rule and metric. The first
        m noises' batches are the first batches of all M's (each rank's a prefix of its own), the last one
        cut at m."""
        if table.endpoints is None:
            raise ValueError(
                "an endpoint probe needs the teacher's endpoints: run the DP with keep_endpoints=True"
            )
        m = table.num_samples if samples is None else check_int(samples, "samples", maximum=table.num_samples)
        shard = Shard.of_this_process(m, run.batch_size)
        ends = [end[:size] for end, size in zip(table.endpoints, shard.sizes, strict=False)]
        evaluator = WideEvaluator(velocity, run.batch_size, resolve_wide_mode(run.mode, device))
        return cls(velocity, make_batch, shard, ends, run.start, run.metric, evaluator, device)

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


def _ladder(
    probe: Callable[[int], float], at: int, lo: int, hi: int, best: float, ladder: Sequence[int]
) -> tuple[int, float, int]:
    """Ladder search of one knot between lo and hi from ``at`` (error ``best``): per rung d, probe at - d
    and at + d (those within lo .. hi) and move to the best of the three. (position, error, moves); at most
    2 len(ladder) probes."""
    moves = 0
    for d in ladder:
        here, low = at, best
        for p in (at - d, at + d):
            if lo <= p <= hi:
                err = probe(p)
                if err < low:
                    here, low = p, err
        if here != at:
            at, best, moves = here, low, moves + 1
    return at, best, moves


def _check_ladder(ladder: Sequence[int]) -> tuple[int, ...]:
    rungs = tuple(check_int(d, "ladder rung") for d in ladder)
    if not rungs:
        raise ValueError("ladder must have at least one rung (grid points a knot is probed away)")
    return rungs


def polish(probe: EndpointProbe, grid: np.ndarray, indices: np.ndarray, knots: str, start_cap: int,
           max_sweeps: int = MAX_SWEEPS, ladder: Sequence[int] = LADDER) -> PolishResult:  # fmt: skip
    """Polish one schedule (``grid[indices]``) by :class:`EndpointProbe` (see the module docstring).

    ``knots``: "start" or "all" (``POLISHES``; "none" is the caller's); ``start_cap``: the last grid point
    the start may take (-1: the start is pinned, rule "zero"); ``max_sweeps`` bounds "all"'s sweeps;
    ``ladder``: the rungs, in grid points, each knot is probed away (positive integers, largest first).
    """
    check_choice(knots, POLISHES[1:], "polish")
    check_int(max_sweeps, "max_sweeps")
    rungs = _check_ladder(ladder)
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
            idx[m], best, n = _ladder(trial, int(idx[m]), int(lo), int(hi), best, rungs)
            moved += n
        moves += moved
        if not moved:
            break
    return PolishResult(indices=idx, error=best, evaluations=probe.evaluations - spent, moves=moves)


def polish_bound(
    steps: int, knots: str, pinned: bool, max_sweeps: int = MAX_SWEEPS, ladder: Sequence[int] = LADDER
) -> int:
    """At most how many model evaluations per noise :func:`polish` spends on one ``steps``-step schedule: K
    for the unmoved schedule, then per sweep and knot m its predecessor (m, for m >= 1) and
    2 len(ladder) probes of K - m each. For "start" (one sweep) this is the count the search spends, less
    the probes that fall outside the start's range; "all" stops sweeping when a sweep moves no knot, so its
    bound assumes ``max_sweeps``.

    Example:
        >>> polish_bound(4, "start", pinned=False), polish_bound(4, "none", pinned=False)
        (28, 0)
    """
    check_choice(knots, POLISHES, "polish")
    probes = 2 * len(_check_ladder(ladder))
    if knots == "none" or (knots == "start" and pinned):
        return 0
    ms = [0] if knots == "start" else list(range(1 if pinned else 0, steps))
    sweeps = 1 if knots == "start" else max_sweeps
    return steps + sweeps * sum(m + probes * (steps - m) for m in ms)


def polish_samples(num_samples: int) -> int:
    """The noises :func:`polish_paths` probes budgets of more than ``WHOLE_UP_TO`` steps on: the first
    ceil(SHARE x M), but at least ``MIN_PROBED`` (read when called) or all M.

    Example:
        >>> polish_samples(1024), polish_samples(256), polish_samples(128), polish_samples(1)
        (512, 128, 128, 1)
    """
    m = check_int(num_samples, "num_samples")
    return min(m, max(math.ceil(SHARE * m), MIN_PROBED))


def probed_on(steps: int, num_samples: int) -> int:
    """The noises one ``steps``-step budget's probes run on in a search of ``num_samples``: all of them for
    budgets of at most ``WHOLE_UP_TO`` steps, else :func:`polish_samples`. The one rule :func:`polish_paths`
    runs and the bill (:func:`polish_rows`, ``boss_fast.search``) counts.

    Example:
        >>> probed_on(2, 256), probed_on(3, 256), probed_on(3, 100)
        (256, 128, 100)
    """
    return num_samples if steps <= WHOLE_UP_TO else polish_samples(num_samples)


def polish_rows(steps: int, knots: str, pinned: bool, num_samples: int) -> int:
    """At most how many model evaluations (rows, over every noise) :func:`polish_paths` spends on one
    ``steps``-step budget of a search of ``num_samples`` noises: :func:`polish_bound` on each of the
    :func:`probed_on` noises, and one K-step sampling of each of the rest (only where a knot moved).

    Example:
        >>> polish_rows(4, "start", pinned=False, num_samples=256)  # 28 x 128 + 4 x 128
        4096
        >>> polish_rows(2, "start", pinned=False, num_samples=256)  # 14 x 256
        3584
    """
    bound = polish_bound(steps, knots, pinned)
    if bound == 0:
        return 0
    probed = probed_on(steps, num_samples)
    return bound * probed + steps * (num_samples - probed)


# ------------------------------------------------------------------------------------ every budget at once

CHECKPOINT_FORMAT = "boss_fast.polish_checkpoint"
CHECKPOINT_VERSION = 2  # 2: the ladder search (1: the one-point pattern search)


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


class _Budgets:
    """Each budget's polish on the probed noises, then the check on the rest (see :func:`polish_paths`)."""

    def __init__(self, velocity: Callable, make_batch: Callable[[int, int], torch.Tensor], table: GlobalTable,
                 run: GlobalPass, knots: str, cap: int, device: torch.device) -> None:  # fmt: skip
        self.table, self.knots, self.cap, self.metric = table, knots, cap, run.metric
        self.probed = polish_samples(table.num_samples)
        self.probe = EndpointProbe.of_table(velocity, make_batch, table, run, device, samples=self.probed)
        self.whole = None
        if self.probed < table.num_samples:
            self.whole = EndpointProbe.of_table(velocity, make_batch, table, run, device)

    def __call__(self, found: BellmanPath) -> tuple[np.ndarray, float, int]:
        """(indices, error on all the noises, model evaluations in all) of one budget's polished path."""
        m, steps = self.table.num_samples, len(found.indices) - 1
        if probed_on(steps, m) == m:
            every = self.probe if self.whole is None else self.whole
            r = polish(every, self.table.times, found.indices, self.knots, self.cap)
            return r.indices, r.error, r.evaluations * m
        r = polish(self.probe, self.table.times, found.indices, self.knots, self.cap)
        spent = r.evaluations * self.probed
        if not r.moves:
            return found.indices, found.cost, spent
        rest = self.whole.per_noise(self.table.times[r.indices], self.probed, m)
        if self.metric == "l2":
            rest = np.sqrt(rest)
        error = (r.error * self.probed + float(rest.sum())) / m
        spent += steps * (m - self.probed)
        return (r.indices, error, spent) if error < found.cost else (found.indices, found.cost, spent)


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
    ``table.endpoints``: [(path with its polished indices and its error on all the noises, model evaluations
    in all)] for K = 1 .. table.max_steps. ``run``: the DP's batch size, metric, mode, start rule and cap.

    Each budget's probes run on the first :func:`probed_on` of the table's noises (half, but at least
    ``MIN_PROBED``; all of them for budgets of at most ``WHOLE_UP_TO`` steps). Where a budget's knots moved on
    fewer than all, the polished schedule is sampled once on the rest, and kept only where its error on all
    the noises is below the DP's (``table``'s cost, on the same noises); else the DP's path stays.
    Probing half the noises halves the polish's cost; the check keeps a move fitted to that half from
    making the schedule worse on the whole (measured on the bundled models: docs/results.md).

    With ``checkpoint`` (the DP's path; this pass writes ``<root>.polish<ext>``) the result is saved after
    every budget and a rerun resumes after the last one saved (same moves: every probe is deterministic).
    """
    check_choice(knots, POLISHES[1:], "polish")
    n = len(table.times)
    cap = -1 if run.start == "zero" else int(start_sources(run.start, n, run.start_cap)[-1])
    budgets = _Budgets(velocity, make_batch, table, run, knots, cap, device)
    path = None
    if checkpoint is not None:
        root, ext = os.path.splitext(os.fspath(checkpoint))
        path = f"{root}.polish{ext}"
    header = {"times": table.times, "max_steps": table.max_steps, "metric": run.metric, "start": run.start,
              "start_cap": cap, "polish": knots, "ladder": np.array(LADDER), "max_sweeps": MAX_SWEEPS,
              "share": SHARE, "min_probed": MIN_PROBED, "whole_up_to": WHOLE_UP_TO,
              "num_samples": table.num_samples, "dp_costs": table.costs, **identity}  # fmt: skip
    ckpt = Checkpoint.open(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, header, "polish checkpoint")
    indices, errors, spent, done = _resume(ckpt, table.max_steps)
    done = budgets.probe.shard.min_over_ranks(done)
    out = []
    with progress_bar(table.max_steps, done, progress, "polish", unit="budget") as bar:
        for k, found in enumerate(global_paths(table), start=1):
            if k > done:
                indices[k - 1, : k + 1], errors[k - 1], spent[k - 1] = budgets(found)
                if ckpt is not None:
                    ckpt.save(indices=indices, errors=errors, evaluations=spent, budgets_done=np.int64(k))
                bar.update(1)
            out.append((BellmanPath(indices=indices[k - 1, : k + 1].copy(), cost=float(errors[k - 1])),
                        int(spent[k - 1])))  # fmt: skip
    return out
