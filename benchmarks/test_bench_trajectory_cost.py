"""Benchmarks of BOSS stage 1: the cost matrix against the published pair loop, and the whole schedule
search against the teacher trajectories it cannot avoid.

Run: python -m pytest benchmarks/test_bench_trajectory_cost.py --benchmark-only
(add -s to see the summaries printed at the end of each group).

1. ``trajectory_cost`` on 101 grid points x 100 samples x 3072 dims (a random float32 trajectory, the shape
   of the reference's CIFAR-10 search) against ``baselines_cost.published_pair_loop_cost`` on the same data,
   in the same run, with the floor: the trajectory's bytes read once at the bandwidth of a plain sum over
   them. Target: >= 20x faster than the pair loop.
2. ``optimal_schedules(...)[K]`` end to end (seeded noise, teacher, cost, DP) against the teacher trajectories
   alone on the same noise: the search should cost at most ~1.2x the model evaluations it needs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.baselines_cost import published_pair_loop_cost
from boss_fast.cost import trajectory_cost
from boss_fast.grids import uniform_grid
from boss_fast.models import DIGITS_SHAPE, load_bundled
from boss_fast.search import SearchSettings, optimal_schedules
from boss_fast.trajectories import seeded_noise, teacher_trajectory

N_GRID, SAMPLES, DIMS = 101, 100, 3 * 32 * 32
MEDIANS: dict[str, float] = {}


@pytest.fixture(scope="module")
def trajectory():
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(N_GRID, SAMPLES, DIMS, generator=gen)
    velocities = torch.randn(N_GRID - 1, SAMPLES, DIMS, generator=gen)
    return states, velocities, uniform_grid(N_GRID - 1)


def test_trajectory_cost(benchmark, trajectory):
    benchmark.group = "cost matrix 101 x 100 x 3072 float32"
    benchmark.pedantic(trajectory_cost, args=trajectory, rounds=7, warmup_rounds=1)
    MEDIANS["ours"] = benchmark.stats.stats.median


def test_baseline_published_pair_loop(benchmark, trajectory):
    benchmark.group = "cost matrix 101 x 100 x 3072 float32"
    baseline = benchmark.pedantic(published_pair_loop_cost, args=trajectory, rounds=1, iterations=1)
    MEDIANS["baseline"] = benchmark.stats.stats.median
    # The baseline reduces in float32: agreement to float32 rounding of sums over 307,200 terms.
    ours = trajectory_cost(*trajectory)
    upper = np.triu(np.ones_like(ours, dtype=bool), 1)
    np.testing.assert_allclose(ours[upper], baseline[upper], rtol=1e-4)


def test_floor_one_read_and_summary(benchmark, trajectory, capsys):
    benchmark.group = "cost matrix 101 x 100 x 3072 float32"
    states, velocities, _ = trajectory
    benchmark.pedantic(lambda: (states.sum(), velocities.sum()), rounds=15, warmup_rounds=2)
    floor = benchmark.stats.stats.median  # one read of the trajectory: the bound for any cost kernel
    nbytes = states.numel() * states.element_size() + velocities.numel() * velocities.element_size()
    ours, baseline = MEDIANS.get("ours"), MEDIANS.get("baseline")
    benchmark.extra_info.update(bandwidth_gb_s=nbytes / floor / 1e9, floor_s=floor)
    lines = [f"read floor: {nbytes / 1e6:.0f} MB at {nbytes / floor / 1e9:.1f} GB/s = {floor * 1e3:.1f} ms"]
    if ours is not None and baseline is not None:
        benchmark.extra_info.update(speedup=baseline / ours, over_floor=ours / floor)
        lines.append(
            f"trajectory_cost {ours * 1e3:.0f} ms, published pair loop {baseline:.2f} s: "
            f"{baseline / ours:.1f}x faster (target >= 20x); {ours / floor:.0f}x the read floor"
        )
    with capsys.disabled():
        print("\n" + "\n".join(lines))


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def velocity_model():
    return load_bundled("digits_dit"), "digits_dit", DIGITS_SHAPE


E2E = {"grid": 100, "num_samples": 256, "batch_size": 256, "steps": 8}


def test_baseline_teacher_trajectories_alone(benchmark, velocity_model):
    model, name, shape = velocity_model
    benchmark.group = f"optimal_schedule, grid 100, 256 samples, {name}"
    noise = seeded_noise(shape, 0, E2E["num_samples"])
    times = uniform_grid(E2E["grid"])
    benchmark.pedantic(teacher_trajectory, args=(model, noise, times), rounds=5, warmup_rounds=1)
    MEDIANS["teacher"] = benchmark.stats.stats.median


def test_optimal_schedule_end_to_end(benchmark, velocity_model, capsys):
    model, name, shape = velocity_model
    benchmark.group = f"optimal_schedule, grid 100, 256 samples, {name}"
    settings = SearchSettings(**{k: E2E[k] for k in ("grid", "num_samples", "batch_size")}, objective="local")
    # The group keeps its recorded name (benchmarks/results/cpu_stage1.json): one budget, read at K.
    sset = benchmark.pedantic(
        optimal_schedules, args=(model, shape, E2E["steps"], settings), rounds=5, warmup_rounds=1
    )
    assert sset[E2E["steps"]].steps == E2E["steps"]
    total, teacher = benchmark.stats.stats.median, MEDIANS.get("teacher")
    if teacher is not None:
        benchmark.extra_info.update(over_teacher=total / teacher)
        with capsys.disabled():
            print(
                f"\noptimal_schedules {total * 1e3:.0f} ms vs teacher trajectories alone "
                f"{teacher * 1e3:.0f} ms ({name}): {total / teacher:.2f}x (target <= ~1.2x)"
            )
