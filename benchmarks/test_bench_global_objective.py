"""Search cost of the global objective (the own-state DP) against the local one (published BOSS).

Run: python -m pytest benchmarks/test_bench_global_objective.py -s  (with --benchmark-only: the timings alone)

1. Model evaluations, counted exactly by a wrapper, of ``optimal_schedules(..., max_steps=10)`` for both
   objectives on the same grid (100 steps) and 256 noises, each with its default teacher and with the same
   teacher. Target: global <= 12x the local search's evaluations.
2. Both searches timed in one run on the analytic 2-D mixture (the local search is the baseline).
3. The DP's bookkeeping (masked argmin per level, backtracking) at N = 101 and 1001 next to one model
   evaluation of the digits DiT on a batch of 256: why it has no compiled kernel.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from benchmarks.quality_global import Counted
from boss_fast.global_objective import GlobalTable, _decide, global_paths
from boss_fast.models import load_bundled
from boss_fast.search import SearchSettings, optimal_schedules

GRID, SAMPLES, K = 100, 256, 10

# The full own-state DP from the pinned start, no polish: what these benchmarks count and time (the default is
# now a free start, the coarse route and the polish).
FULL_DP = {"dp": "full", "polish": "none", "start": "zero"}


def _count(model: Counted, objective: str, solver: str | None) -> float:
    model.rows = 0
    optimal_schedules(
        model,
        (2,),
        K,
        SearchSettings(objective=objective, grid=GRID, num_samples=SAMPLES, solver=solver, **FULL_DP),
    )
    return model.rows / SAMPLES


def test_evaluation_counts(capsys):
    model = Counted(load_bundled("gmm2d"))
    n = GRID + 1
    dp = 1 + sum(n - k for k in range(2, K + 1))  # level 1: the noise only; level k: sources k - 1 .. N - 2
    counts = {
        ("local", "euler"): _count(model, "local", None),
        ("local", "heun"): _count(model, "local", "heun"),
        ("global", "heun"): _count(model, "global", None),
        ("global", "rk4"): _count(model, "global", "rk4"),
        ("global", "euler"): _count(model, "global", "euler"),
    }
    per_step = {"euler": 1, "heun": 2, "rk4": 4}
    for (objective, solver), got in counts.items():
        teacher = per_step[solver] * GRID
        assert got == teacher + (dp if objective == "global" else 0)
    ratio = counts[("global", "heun")] / counts[("local", "euler")]
    assert ratio <= 12.0
    with capsys.disabled():
        print(f"\nmodel evaluations per sample, grid {GRID}, K = 1..{K}, {SAMPLES} noises:")
        for (objective, solver), got in counts.items():
            ratio = got / counts[("local", "euler")]
            print(f"  {objective:6s} teacher {solver:5s} {got:6.0f}  ({ratio:.2f}x)")


@pytest.mark.parametrize("objective", ["local", "global"], ids=["baseline_local", "global"])
def test_search_time(benchmark, objective):
    model = load_bundled("gmm2d")
    benchmark.group = f"optimal_schedules, gmm2d, grid {GRID}, {SAMPLES} noises, K = 1..{K}"
    settings = SearchSettings(grid=GRID, num_samples=SAMPLES, objective=objective, **FULL_DP)
    benchmark.pedantic(optimal_schedules, args=(model, (2,), K, settings), rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("n", [101, 1001])
def test_dp_bookkeeping(n, capsys):
    rng = np.random.default_rng(0)
    sums = {level: rng.random((n - max(0, level - 1),) * 2) for level in range(1, K + 1)}
    costs = np.full((K + 1, n), np.inf)
    pointers = np.full((K + 1, n), -1, dtype=np.int64)
    start = time.perf_counter()
    for level in range(1, K + 1):
        lo = 0 if level == 1 else level - 1
        costs[level], pointers[level] = _decide(sums[level], 256, lo, level, n)
    paths = global_paths(GlobalTable(costs, pointers, np.linspace(0.0, 1.0, n), 256))
    bookkeeping = time.perf_counter() - start
    assert [p.steps for p in paths] == list(range(1, K + 1))
    model = load_bundled("digits_dit")
    x, t = torch.randn(256, 1, 8, 8), torch.full((256,), 0.5)
    with torch.no_grad():
        model(x, t)
        start = time.perf_counter()
        model(x, t)
    one_eval = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nN = {n}: argmin + backtracking for K = 1..{K}: {bookkeeping * 1e3:.2f} ms; one digits DiT "
              f"evaluation of 256 samples: {one_eval * 1e3:.1f} ms")  # fmt: skip
