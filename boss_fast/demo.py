"""The main job, ``boss-fast demo``: step schedules compared against a converged reference.

For each model (default the bundled digits DiT and the narrow 8-Gaussian mixture ``gmm2d_narrow``, where
uniform steps are far from the best few-step schedule) and every budget K = 1 .. max_nfe it compares uniform
steps, the SD3-style shifted schedule, the EDM (rho = 7) schedule and the searched rows of
``DemoConfig.searches`` (default :data:`DEMO_SEARCHES`: the published Bellman schedule, ``objective="local"``
with the start pinned at t = 0, BOSS's sum of one-step errors; the global one, ``objective="global"``, the DP
over the sampler's own states, with the start pinned; and the search's default, the global one with the start
searched), each found by ONE search for every budget with ``search`` (a ``SearchSettings``: grid, noises,
seed, ...; None: each model's measured number of noises, seed 0). Optionally
(``oracle=True``) an oracle row (:mod:`boss_fast.oracle`): coordinate descent on the endpoint error over grid
schedules, fitted on those same search noises.

Everything is judged on ``eval_samples`` OTHER noises (seed ``search.seed + 1``): endpoint RMSE against a
converged dopri5 reference from the same noises (``reference_solution``; cached in the report folder, keyed
by the model's fingerprint, the noise's digest and the tolerances, so a stale file is never reused), and for
the digits FD to held-out digits (bundled classifier). Every difference to uniform steps carries a paired-
bootstrap 95% interval (the same noises for both schedules, sample indices resampled jointly). Every
schedule runs through ``Sampler`` (eager, one static batch of all evaluation noises). Writes a report
folder (README, "The main job"). With ``straighten=StraightenSettings(...)`` (e.g.
:func:`demo_straighten_settings`) it also fine-tunes the DiT for the local and the global NFE 2 and 4
schedules (BOSS stage 2) and reports those rows apart.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors
from tqdm.auto import tqdm

from boss_fast import report
from boss_fast._header import check_header, make_header, write_file
from boss_fast._identity import model_fingerprint, noise_digest
from boss_fast._validation import check_float, check_int, schedule_start, schedule_times
from boss_fast.grids import edm_grid, shifted_grid, uniform_grid
from boss_fast.metrics import (
    PairedDifference,
    bootstrap_statistics,
    bootstrap_weights,
    digits_features,
    fd_statistic,
    paired_difference,
    rmse_statistic,
)
from boss_fast.models import BUNDLED, digits, load_bundled
from boss_fast.oracle import oracle
from boss_fast.sampler import Sampler
from boss_fast.schedule import Schedule
from boss_fast.search import SearchSettings, optimal_schedules
from boss_fast.straighten import StraightenSettings, straighten
from boss_fast.trajectories import reference_solution, seeded_noise

__all__ = [
    "DemoConfig",
    "DemoModel",
    "DemoSearch",
    "DEMO_SEARCHES",
    "cached_reference",
    "demo_straighten_settings",
    "run_demo",
    "DEMO_MODELS",
    "SCHEDULE_NAMES",
]

UNIFORM = "uniform"
LOCAL = "Bellman, local (BOSS)"
PINNED = "Bellman, global, pinned start"
GLOBAL = "Bellman, global (own states)"
ORACLE = "oracle (coordinate descent)"
BASELINES: dict[str, Callable[[int], np.ndarray]] = {
    UNIFORM: uniform_grid,
    "shifted (SD3, shift 3)": lambda k: shifted_grid(k, shift=3.0),
    "EDM (rho 7)": lambda k: edm_grid(k, rho=7.0),
}


@dataclass(frozen=True)
class DemoSearch:
    """One searched row of the demo: its label, the file stem of its schedules
    (``schedules/<model>_<stem>_nfe<K>.json``), its objective and start rule (None: the search default,
    the objective's ``boss_fast.search.DEFAULT_START``) and its global DP route (None: the default,
    ``boss_fast.search.DEFAULT_DP`` with the default polish)."""

    label: str
    stem: str
    objective: str
    start: str | None = None
    dp: str | None = None

    def settings(self, base: SearchSettings) -> SearchSettings:
        """``base`` with this row's objective and start, and its DP route where it names one (a local row
        drops a global route of ``base``)."""
        dp = self.dp if self.dp is not None else base.dp
        return replace(base, objective=self.objective, start=self.start,
                       dp=dp if self.objective == "global" else None)  # fmt: skip


# BOSS as published (local objective, pinned at t = 0), the global objective pinned at t = 0 (its full DP, the
# default before the start was searched), and the search's default (the global objective with the default
# start rule, DP route and polish).
DEMO_SEARCHES: tuple[DemoSearch, ...] = (
    DemoSearch(LOCAL, "local", "local", "zero"),
    DemoSearch(PINNED, "global_pinned", "global", "zero", dp="full"),
    DemoSearch(GLOBAL, "global", "global", None),
)
SCHEDULE_NAMES: tuple[str, ...] = (*BASELINES, *(s.label for s in DEMO_SEARCHES), ORACLE)

# Evaluation and reference batch: 250 samples' DiT activations stay in cache where 1000's do not; on this
# 2-core CPU the same sampling ran about 15-25% faster in chunks of 250 than as one batch of 1000
# (single-thread A/B runs).
EVAL_CHUNK = 250
REFERENCE_FORMAT = "boss_fast.reference"
REFERENCE_VERSION = "2"


@dataclass(frozen=True)
class DemoModel:
    """A model the demo runs: its sample shape, the dtype it is sampled in, whether FD applies, and how many
    noises its searches use unless ``DemoConfig.search`` says otherwise."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    digits: bool
    num_samples: int


# Search sizes, measured (benchmarks/results/search_samples.md, schedules judged on 1000 other noises): on
# the digits DiT 128 noises give the global schedule's gain over uniform within 0.1% of 256's on three
# seeds (geomean over K = 2..10: 0.969), at half the search time; the narrow mixture, whose few mode-
# switching samples dominate its error, needs 256 for a stable answer (128: 3% worse), and its search costs
# 3 s either way.
DEMO_MODELS: dict[str, DemoModel] = {
    "digits_dit": DemoModel(BUNDLED["digits_dit"].shape, torch.float32, digits=True, num_samples=128),
    # The analytic mixture is exact in float64; its narrow modes make float32 round-off visible near t = 1.
    "gmm2d_narrow": DemoModel(BUNDLED["gmm2d_narrow"].shape, torch.float64, digits=False, num_samples=256),
}


@dataclass(frozen=True)
class DemoConfig:
    out: str = "report"
    models: tuple[str, ...] = ("digits_dit", "gmm2d_narrow")
    # The searches' settings: the demo runs every row of ``searches`` with them (objective and start
    # replaced), on every model; grid (an int here: the report and the oracle use the uniform grid) and seed
    # serve the whole demo. None: SearchSettings() with each model's measured number of noises, all in one
    # batch (DemoModel.num_samples).
    search: SearchSettings | None = None
    searches: tuple[DemoSearch, ...] = DEMO_SEARCHES
    # The rows every other row's differences are paired against (in the results: "<metric>_vs_<label>").
    versus: tuple[str, ...] = (UNIFORM,)
    max_nfe: int = 10
    eval_samples: int = 1000
    progress: bool = True
    # dopri5 tolerances of the reference: at 1e-5 its own error is far below the 10-step errors reported.
    rtol: float = 1e-5
    atol: float = 1e-5
    # Paired-bootstrap resamples: the RMSE intervals are a matrix-vector product each; an FD resample is a
    # 64x64 covariance and eigen-decomposition, so fewer of them.
    bootstrap: int = 1000
    fd_bootstrap: int = 200
    oracle: bool = False
    oracle_max_nfe: int = 6
    oracle_sweeps: int = 10
    grid_nfes: tuple[int, ...] = field(default=(2, 4, 8))
    scatter_nfes: tuple[int, ...] = field(default=(2, 3, 4))
    # None: no straightened rows; demo_straighten_settings() gives what `boss-fast demo --straighten` runs.
    straighten: StraightenSettings | None = None
    straighten_nfes: tuple[int, ...] = field(default=(2, 4))

    def __post_init__(self) -> None:
        """Every field checked at construction, so ``boss-fast demo`` refuses a bad flag before any work."""
        if not isinstance(self.out, str | os.PathLike) or not os.fspath(self.out):
            raise ValueError(f"out must be a non-empty path, got {self.out!r}")
        unknown = [m for m in self.models if m not in DEMO_MODELS]
        if unknown or not self.models:
            raise ValueError(
                f"models must be a non-empty subset of {sorted(DEMO_MODELS)}, got {list(self.models)}"
            )
        _check_demo_searches(self.search, self.searches, self.versus)
        check_int(self.max_nfe, "max_nfe", minimum=1, maximum=self.grid - 1)
        check_int(self.eval_samples, "eval_samples", minimum=2)  # a spread (RMSE interval, FD) needs two
        for name in ("bootstrap", "fd_bootstrap", "oracle_max_nfe", "oracle_sweeps"):
            check_int(getattr(self, name), name)
        self._check_straighten(self.grid)
        for name in ("grid_nfes", "scatter_nfes", "straighten_nfes"):
            for k in getattr(self, name):
                check_int(k, f"{name} entry")
        for name in ("rtol", "atol"):
            if check_float(getattr(self, name), name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def grid(self) -> int:
        """The searches' uniform grid (steps), shared by the oracle and straightening."""
        return (self.search or SearchSettings()).grid

    def _check_straighten(self, grid: int) -> None:
        """``straighten``: None or a StraightenSettings on the demo's own grid (its schedules')."""
        if self.straighten is None:
            return
        if not isinstance(self.straighten, StraightenSettings):
            raise TypeError(
                f"straighten must be a StraightenSettings or None, got {type(self.straighten).__name__}"
            )
        if self.straighten.grid != grid:
            raise ValueError(
                f"straighten.grid {self.straighten.grid!r} differs from grid {grid}: the demo's schedules "
                "are searched on grid, so straighten on it (demo_straighten_settings(grid=...))"
            )

    @property
    def seed(self) -> int:
        """The searches' seed; the evaluation noises use seed + 1, the bootstrap this seed."""
        return (self.search or SearchSettings()).seed

    def search_for(self, spec: DemoModel, row: DemoSearch) -> SearchSettings:
        """The settings of ``spec``'s search for the demo row ``row``."""
        if self.search is None:
            return row.settings(SearchSettings(num_samples=spec.num_samples, batch_size=spec.num_samples))
        return row.settings(self.search)


def demo_straighten_settings(iters: int = 800, grid: int = 100, seed: int = 0) -> StraightenSettings:
    """What ``boss-fast demo --straighten`` trains with: ``iters`` steps of batch 64 on 2000 noises' pairs,
    warm-up ``min(100, iters)``, EMA 0.99 (0.999 would still weigh the first steps of so short a run).

    800 iterations: about 30 s per NFE on 2 CPU cores, teacher pairs included (measured); ``boss-fast demo
    --straighten`` took 1 min 55 s in all, FD 411 -> 42 at NFE 2.

    Example:
        >>> demo_straighten_settings(iters=50, grid=20).warmup
        50
    """
    return StraightenSettings(
        num_pairs=2000, grid=grid, iters=iters, warmup=min(100, iters), ema=0.99, seed=seed
    )


def _check_demo_searches(search: object, searches: object, versus: object) -> None:
    """``DemoConfig.searches``: DemoSearch rows of distinct labels and stems, none a baseline's name;
    ``versus``: labels of rows; then :func:`_check_demo_search`."""
    if not isinstance(searches, tuple) or not all(isinstance(r, DemoSearch) for r in searches):
        raise TypeError(f"searches must be a tuple of DemoSearch, got {searches!r}")
    labels = [r.label for r in searches]
    if len(set(labels)) != len(labels) or len({r.stem for r in searches}) != len(searches):
        raise ValueError(f"searches must have distinct labels and stems, got {labels}")
    if set(labels) & {*BASELINES, ORACLE}:
        raise ValueError(f"searches' labels must differ from {sorted({*BASELINES, ORACLE})}, got {labels}")
    if not isinstance(versus, tuple) or not all(v in (*BASELINES, *labels) for v in versus):
        raise ValueError(f"versus must be a tuple of row labels ({[*BASELINES, *labels]}), got {versus!r}")
    _check_demo_search(search, searches)


def _check_demo_search(search: object, searches: tuple[DemoSearch, ...]) -> None:
    """``DemoConfig.search``: None, or a SearchSettings with an int grid of >= 2 steps and an int number of
    noises (the oracle fits on the search noises) that runs with every row's objective and start."""
    if search is None:
        return
    if not isinstance(search, SearchSettings):
        raise TypeError(f"search must be a SearchSettings or None, got {type(search).__name__}")
    if not isinstance(search.grid, int) or search.grid < 2:
        raise ValueError(f"search.grid must be an int >= 2 (the demo's uniform grid), got {search.grid!r}")
    if search.num_samples == "auto":
        raise ValueError("search.num_samples must be an integer here: the oracle fits on the search noises")
    for row in searches:
        try:
            row.settings(search)
        except ValueError as err:
            raise ValueError(
                f"search: the demo runs every row; with objective={row.objective!r}, start={row.start!r}: "
                f"{err}"
            ) from None


def cached_reference(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    path: str | os.PathLike,
    *,
    fingerprint: str,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    chunk: int = EVAL_CHUNK,
) -> tuple[torch.Tensor, bool]:
    """``reference_solution(model, noise, rtol=rtol, atol=atol)`` over ``chunk`` noises at a time (each chunk
    its own adaptive steps: a batch's step size answers to its worst sample, and 250 samples' activations stay
    in cache), read from ``path`` when that file holds it.

    The file (safetensors: the endpoints and a header naming format, version, model fingerprint, noise digest,
    shape, dtype, tolerances and chunk) is reused only when every key matches; otherwise (another model,
    other noise, other tolerances, an unreadable file) the reference is recomputed and the file rewritten
    atomically.

    Returns:
        (reference (B, ...) like noise, whether the file was reused).
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    header = make_header(
        REFERENCE_FORMAT,
        REFERENCE_VERSION,
        solver="dopri5",
        fingerprint=fingerprint,
        noise=noise_digest(noise, length=32),
        shape=json.dumps(list(noise.shape)),
        dtype=str(noise.dtype),
        rtol=repr(float(rtol)),
        atol=repr(float(atol)),
        chunk=str(int(chunk)),
    )
    if os.path.isfile(path):
        try:
            with safe_open(path, framework="pt") as handle:
                check_header(handle.metadata() or {}, header, os.fspath(path), "reference cache")
                return handle.get_tensor("reference"), True
        except (SafetensorError, OSError, ValueError):
            pass  # unreadable, or another model, noise or tolerances: recompute below and overwrite it
    parts = [reference_solution(model, part, rtol=rtol, atol=atol) for part in noise.split(chunk)]
    reference = torch.cat(parts)
    blob = save_safetensors({"reference": reference.contiguous()}, metadata=header)
    write_file(path, lambda f: f.write(blob))
    return reference, False


class _Clock:
    """Wall time of each phase, printed as it ends and kept for the report."""

    def __init__(self, progress: bool) -> None:
        self.wall: dict[str, float] = {}
        self.progress = progress

    def phase(self, name: str, start: float) -> None:
        self.wall[name] = time.perf_counter() - start
        if self.progress:
            print(f"[demo] {name}: {self.wall[name]:.1f} s", flush=True)


def _search_samples(cfg: DemoConfig, spec: DemoModel) -> int:
    return spec.num_samples if cfg.search is None else cfg.search.num_samples


def _searched(
    cfg: DemoConfig, name: str, model, spec: DemoModel, clock: _Clock
) -> dict[str, dict[int, Schedule]]:
    """{label: {K: Schedule}} of every searched row (``cfg.searches``), one search each for every budget."""
    found = {}
    for row in cfg.searches:
        t0 = time.perf_counter()
        settings = cfg.search_for(spec, row)
        found[row.label] = optimal_schedules(
            model, spec.shape, cfg.max_nfe, settings, dtype=spec.dtype, progress=cfg.progress
        )
        clock.phase(f"{name}: {row.stem} search (start {settings.start_rule}), every budget", t0)
        for sched in found[row.label].values():
            sched.save(os.path.join(cfg.out, "schedules", f"{name}_{row.stem}_nfe{sched.steps}.json"))
    return found


def _oracle_rows(cfg, name, model, spec, init: Mapping[int, Schedule], clock) -> dict[int, Schedule]:
    """Coordinate descent on the endpoint error over grid schedules, fitted on the search noises, run from
    uniform steps and from ``init`` (the global schedule), with ``init``'s start rule (a free start moves
    too; the lower on the fit noises is kept): {K: Schedule} for K = 2 .. oracle_max_nfe (K = 1 has nothing
    to move with a pinned start)."""
    t0 = time.perf_counter()
    fit = seeded_noise(spec.shape, 0, _search_samples(cfg, spec), seed=cfg.seed, dtype=spec.dtype)
    fit_ref, _ = cached_reference(
        model, fit, os.path.join(cfg.out, f"reference_{name}_fit.safetensors"),
        fingerprint=model_fingerprint(model), rtol=cfg.rtol, atol=cfg.atol,
    )  # fmt: skip
    grid = uniform_grid(cfg.grid)
    rows = {}
    for k in range(2, min(cfg.oracle_max_nfe, cfg.max_nfe) + 1):
        starts, rule = {"uniform": None, "global": init[k].indices}, init[k].start
        runs, chosen = oracle(model, fit, fit_ref, grid, k, starts, max_sweeps=cfg.oracle_sweeps, start=rule)
        idx = runs[chosen].indices
        rows[k] = Schedule(times=grid[idx], indices=idx, cost=runs[chosen].error, grid=grid, solver="dopri5",
                           num_samples=len(fit), objective="global", start=rule)  # fmt: skip
    clock.phase(f"{name}: oracle (coordinate descent, K = 2..{cfg.oracle_max_nfe})", t0)
    return rows


@dataclass
class _Evaluated:
    """What the report needs from the samples of one schedule at one budget."""

    sq_err: np.ndarray  # (n,) per-sample mean squared endpoint error against the reference
    features: np.ndarray | None  # (n, 64) classifier features (digits only)
    shown: np.ndarray | None  # samples kept for the figures


class _SharedFirstVelocity(torch.nn.Module):
    """``model`` with the velocity at (noise, t = 0) computed once: every schedule pinned at t = 0 starts
    there, so of those S distinct schedules' first model evaluations, S - 1 are the same one. Any other
    (x, t) goes to the model; the cached tensor is exactly what the model returned for that batch."""

    def __init__(self, model: torch.nn.Module, noise: torch.Tensor) -> None:
        super().__init__()
        self.model, self.noise = model, noise
        self.first: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape != self.noise.shape or bool(t.any()) or not torch.equal(x, self.noise):
            return self.model(x, t)
        if self.first is None:
            self.first = self.model(x, t)
        return self.first.clone()


Timed = Schedule | np.ndarray  # a searched schedule (with its start rule) or a baseline's plain times


def _key(sched: Timed) -> tuple[str, tuple[float, ...]]:
    """What a sampler runs of ``sched``: its times and whether its start state is the noise or the scaled
    noise (every rule starts from the noise itself at t = 0, and "zero" and "noise" from it anywhere)."""
    times = tuple(float(t) for t in schedule_times(sched))
    scaled = schedule_start(sched) == "scaled" and times[0] != 0.0
    return ("scaled" if scaled else "noise", times)


def _evaluate(cfg, model, spec, noise, reference, schedules, keep: set[int], clock, name) -> dict:
    """Run every (schedule, K) through eager ``Sampler`` s over the evaluation noises (in chunks of
    ``EVAL_CHUNK``), each from its start rule's state; identical schedules (every K = 1, say) run once, and
    the first velocity at (noise, t = 0), shared by the schedules that start there, is computed once per
    chunk."""
    t0 = time.perf_counter()
    distinct: dict[tuple, list[int]] = {}  # _key -> the budgets that asked for it
    runs: dict[tuple, Timed] = {}  # _key -> one schedule with that key
    for per in schedules.values():
        for k in per:
            distinct.setdefault(_key(per[k]), []).append(k)
            runs.setdefault(_key(per[k]), per[k])
    samples: dict[tuple, list[torch.Tensor]] = {key: [] for key in distinct}
    chunks = list(range(0, len(noise), EVAL_CHUNK))
    for start in tqdm(chunks, desc=f"evaluate {name}", disable=not cfg.progress):
        part = noise[start : start + EVAL_CHUNK]
        shared = _SharedFirstVelocity(model, part)
        for key in distinct:
            samples[key].append(
                Sampler(shared, runs[key], mode="eager", batch_size=len(part), dtype=spec.dtype)(part)
            )
    ref = reference.double().reshape(len(reference), -1)
    done: dict[tuple, _Evaluated] = {}
    for key, parts in samples.items():
        x = torch.cat(parts)
        sq_err = (x.double().reshape(len(x), -1) - ref).square().mean(dim=1).numpy()
        features = digits_features(x) if spec.digits else None
        shown = x[:16].numpy() if spec.digits else x.numpy()
        done[key] = _Evaluated(sq_err, features, shown if keep.intersection(distinct[key]) else None)
    out = {label: {k: done[_key(per[k])] for k in per} for label, per in schedules.items()}
    clock.phase(f"{name}: evaluation ({len(done)} distinct schedules x {len(noise)} noises)", t0)
    return out


def _interval(d: PairedDifference) -> list[float]:
    return [d.estimate, d.low, d.high]


def _metrics(cfg, evaluated, fd, clock, name) -> dict:
    """{label: {K: {rmse, rmse_vs_uniform, [fd, fd_vs_uniform]}}}, each difference to uniform steps (and to
    every other row of ``cfg.versus``: "<metric>_vs_<label>") as [estimate, low, high] from a paired
    bootstrap over the evaluation noises. Each distinct schedule's statistics are computed once (identical
    schedules share one ``_Evaluated``) and paired with the baselines'."""
    t0 = time.perf_counter()
    weights = bootstrap_weights(cfg.eval_samples, cfg.bootstrap, seed=cfg.seed)
    stats: dict[int, dict[str, np.ndarray]] = {}

    def of(ev: _Evaluated) -> dict[str, np.ndarray]:
        if id(ev) not in stats:
            stats[id(ev)] = {"rmse": bootstrap_statistics(ev.sq_err, rmse_statistic, weights)}
            if fd is not None:
                stats[id(ev)]["fd"] = bootstrap_statistics(ev.features, fd, weights[: cfg.fd_bootstrap])
        return stats[id(ev)]

    results: dict[str, dict[int, dict]] = {}
    for label, per in evaluated.items():
        results[label] = {}
        for k, ev in per.items():
            mine = of(ev)
            results[label][k] = row = {metric: float(mine[metric][0]) for metric in mine}
            for versus in (v for v in cfg.versus if k in evaluated[v]):
                base = of(evaluated[versus][k])
                for metric in mine:
                    row[f"{metric}_vs_{versus}"] = _interval(paired_difference(mine[metric], base[metric]))
    clock.phase(f"{name}: metrics and paired bootstrap", t0)
    return results


def _run_model(cfg: DemoConfig, name: str, clock: _Clock) -> dict:
    spec = DEMO_MODELS[name]
    model = load_bundled(name)
    fingerprint = model_fingerprint(model)
    nfes = list(range(1, cfg.max_nfe + 1))
    schedules: dict[str, dict[int, np.ndarray]] = {
        label: {k: np.asarray(make(k)) for k in nfes} for label, make in BASELINES.items()
    }
    searched = _searched(cfg, name, model, spec, clock)
    schedules.update({label: dict(per) for label, per in searched.items()})
    if cfg.oracle:
        # From the search default's schedules (the first global row where the default is not run).
        rows = [r.label for r in cfg.searches if r.label == GLOBAL] or [
            r.label for r in cfg.searches if r.objective == "global"
        ]
        init = searched[(rows or [cfg.searches[0].label])[0]]
        schedules[ORACLE] = {1: np.asarray(uniform_grid(1))} | _oracle_rows(
            cfg, name, model, spec, init, clock
        )

    t0 = time.perf_counter()
    # Held-out noise stream (seed + 1), never the one the schedules were fitted on.
    noise = seeded_noise(spec.shape, 0, cfg.eval_samples, seed=cfg.seed + 1, dtype=spec.dtype)
    reference, reused = cached_reference(
        model, noise, os.path.join(cfg.out, f"reference_{name}.safetensors"),
        fingerprint=fingerprint, rtol=cfg.rtol, atol=cfg.atol,
    )  # fmt: skip
    clock.phase(f"{name}: dopri5 reference ({'reused from the cache' if reused else 'computed'})", t0)

    keep = set(cfg.grid_nfes if spec.digits else cfg.scatter_nfes)
    evaluated = _evaluate(cfg, model, spec, noise, reference, schedules, keep, clock, name)
    fd = fd_statistic(digits_features(digits("test")[0])) if spec.digits else None
    results = _metrics(cfg, evaluated, fd, clock, name)
    shown = {
        k: {label: per[k].shown for label, per in evaluated.items() if k in per and per[k].shown is not None}
        for k in sorted(keep)
        if k <= cfg.max_nfe
    }
    reference_fd = None if fd is None else float(fd(digits_features(reference), np.ones((1, len(noise))))[0])
    return {
        "fingerprint": fingerprint,
        "shape": list(spec.shape),
        "dtype": str(spec.dtype),
        "reference": {
            "solver": "dopri5",
            "rtol": cfg.rtol,
            "atol": cfg.atol,
            "reused": reused,
            "fd": reference_fd,
        },
        "search": {
            label: {"solver": s.solver, "num_samples": s.num_samples, "grid": cfg.grid, "start": s.start}
            for label, s in ((label, per[cfg.max_nfe]) for label, per in searched.items())
        },
        "results": results,
        "schedules": schedules,
        "_shown": shown,
        "_reference_points": reference.numpy() if not spec.digits else None,
        "_model": model,
        "_noise": noise,
    }


@torch.no_grad()
def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo and write its report to ``cfg.out``; returns the results dictionary it saved.

    ``cfg`` was checked when it was built (:class:`DemoConfig` refuses a bad field before any work)."""
    os.makedirs(os.path.join(cfg.out, "schedules"), exist_ok=True)
    clock = _Clock(cfg.progress)
    start = time.perf_counter()
    runs = {name: _run_model(cfg, name, clock) for name in cfg.models}
    straightened = {}
    if "digits_dit" in runs:
        straightened = _straightened_rows(cfg, runs["digits_dit"], clock)
    t0 = time.perf_counter()
    nfes = list(range(1, cfg.max_nfe + 1))
    _write_figures(cfg, runs, nfes)
    clock.phase("figures", t0)
    clock.wall["total"] = time.perf_counter() - start
    summary = {
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "models": {name: _public(run) for name, run in runs.items()},
        "wall_s": clock.wall,
    }
    if straightened:
        summary["straightened"] = [
            {"schedule": label, "nfe": k, **row} for (label, k), row in straightened.items()
        ]
    report.save_text(
        os.path.join(cfg.out, "results.md"), _markdown(cfg, runs, nfes, clock.wall, straightened)
    )
    report.save_json(os.path.join(cfg.out, "results.json"), summary)
    return summary


def _public(run: dict) -> dict:
    """The JSON-able part of a model's run (string keys, lists)."""
    out = {k: v for k, v in run.items() if not k.startswith("_")}
    out["results"] = {label: {str(k): v for k, v in per.items()} for label, per in run["results"].items()}
    out["schedules"] = {
        label: {str(k): [float(t) for t in schedule_times(ts)] for k, ts in per.items()}
        for label, per in run["schedules"].items()
    }
    # the start rule each schedule is sampled with (plain times: from the noise)
    out["starts"] = {
        label: {str(k): schedule_start(s) for k, s in per.items()} for label, per in run["schedules"].items()
    }
    return out


def _straightened_rows(cfg: DemoConfig, run: dict, clock: _Clock) -> dict:
    """BOSS stage 2 on the local and on the global schedules of ``cfg.straighten_nfes``, each with its own
    teacher (``sched.solver``): {(label, nfe): {fd, rmse, schedule_fd}}."""
    if cfg.straighten is None:
        return {}
    model, noise = run["_model"], run["_noise"]
    reference, _ = cached_reference(
        model, noise, os.path.join(cfg.out, "reference_digits_dit.safetensors"),
        fingerprint=run["fingerprint"], rtol=cfg.rtol, atol=cfg.atol,
    )  # fmt: skip
    fd = fd_statistic(digits_features(digits("test")[0]))
    rows = {}
    for k in (k for k in cfg.straighten_nfes if k <= cfg.max_nfe):
        for objective, label in (("local", LOCAL), ("global", GLOBAL)):
            t0 = time.perf_counter()
            sched = Schedule.load(os.path.join(cfg.out, "schedules", f"digits_dit_{objective}_nfe{k}.json"))
            with torch.enable_grad():
                student = straighten(model, sched, settings=cfg.straighten, progress=cfg.progress)
            x = Sampler(student, sched, mode="eager", batch_size=len(noise))(noise)
            rows[label, k] = {
                "fd": float(fd(digits_features(x), np.ones((1, len(x))))[0]),
                "rmse": float(((x - reference).double().square().mean()).sqrt()),
                "schedule_fd": run["results"][label][k]["fd"],
                "teacher": sched.solver,
            }
            clock.phase(f"straightening, {objective} NFE {k} ({cfg.straighten.iters} iterations)", t0)
    return rows


def _write_figures(cfg: DemoConfig, runs: dict, nfes: list[int]) -> None:
    for name, run in runs.items():
        digits_model = DEMO_MODELS[name].digits
        prefix = "" if digits_model else f"{name}_"
        report.plot_quality(
            run["results"], nfes, os.path.join(cfg.out, f"{prefix}quality_vs_nfe.png"),
            metrics=("fd", "rmse") if digits_model else ("rmse",), title=name,
            references={"dopri5 reference": run["reference"]["fd"]} if digits_model else None,
        )  # fmt: skip
        report.plot_schedules(
            {
                label: {k: schedule_times(ts) for k, ts in run["schedules"][label].items()}
                for label in (*(row.label for row in cfg.searches), ORACLE)
                if label in run["schedules"]
            },
            os.path.join(cfg.out, "bellman_steps.png" if digits_model else f"{name}_steps.png"),
            title=name,
        )
        if digits_model:
            for k, rows in run["_shown"].items():
                report.save_sample_grid(
                    rows, os.path.join(cfg.out, f"samples_nfe{k}.png"), title=f"NFE = {k}"
                )
        else:
            report.plot_scatter(
                run["_shown"],
                run["_reference_points"],
                os.path.join(cfg.out, f"{name}_scatter.png"),
                title=name,
            )


def _sizes(cfg: DemoConfig) -> str:
    return ", ".join(f"{name} {_search_samples(cfg, DEMO_MODELS[name])}" for name in cfg.models)


def _markdown(cfg: DemoConfig, runs: dict, nfes: list[int], wall: dict, straightened: dict) -> str:
    parts = [
        "# boss_fast demo: step schedules against a converged reference\n",
        f"Searches: uniform grid of {cfg.grid} steps, {_sizes(cfg)} noises (seed {cfg.seed}), one search "
        "per objective for every budget. Judged on "
        f"{cfg.eval_samples} other noises (seed {cfg.seed + 1}): endpoint RMSE against dopri5 (rtol "
        f"{cfg.rtol:g}, atol {cfg.atol:g}) from the same noises, and for the digits FD to held-out digits. "
        "In brackets: the difference to uniform steps in percent, with its paired-bootstrap 95% interval "
        f"({cfg.bootstrap} resamples for RMSE, {cfg.fd_bootstrap} for FD); the best entry of each row in "
        "bold.\n",
    ]
    for name, run in runs.items():
        search = ", ".join(f"{label}: {s['solver']} teacher" for label, s in run["search"].items())
        parts.append(f"## {name}\n\nSearch teachers: {search}.\n")
        if DEMO_MODELS[name].digits:
            parts.append(
                "### FD to held-out digits (lower is better; the dopri5 reference scores "
                f"{run['reference']['fd']:.2f})\n\n"
                + report.markdown_table(run["results"], "fd", nfes, delta="fd_vs_uniform", baseline=UNIFORM)
            )
        parts.append(
            "### Endpoint RMSE against the dopri5 reference\n\n"
            + report.markdown_table(
                run["results"], "rmse", nfes, digits=4, delta="rmse_vs_uniform", baseline=UNIFORM
            )
        )
    parts.append(_straightened_table(cfg, straightened))
    parts.append(
        "## Wall time\n\n" + "\n".join(f"- {name}: {seconds:.1f} s" for name, seconds in wall.items()) + "\n"
    )
    return "\n".join(parts)


def _straightened_table(cfg: DemoConfig, straightened: dict) -> str:
    if not straightened:
        return ""
    lines = [
        "| schedule | NFE | teacher | FD before | straightened FD | straightened RMSE |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for (label, k), row in straightened.items():
        lines.append(
            f"| {label} | {k} | {row['teacher']} | {row['schedule_fd']:.2f} | {row['fd']:.2f} | "
            f"{row['rmse']:.3f} |"
        )
    return (
        "## BOSS stage 2: straightened for the local and the global steps\n\n"
        f"{cfg.straighten.iters} iterations, batch {cfg.straighten.batch_size}, pairs from "
        f"{cfg.straighten.num_pairs} noises on each schedule's own teacher.\n\n" + "\n".join(lines) + "\n"
    )
