"""The benchmark-only oracle (benchmarks/oracle.py): coordinate descent on the endpoint error over grid
schedules, checked against brute force over every grid schedule on an analytic flow."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from benchmarks.oracle import coordinate_descent, endpoint_error, oracle, uniform_indices
from boss_fast.grids import uniform_grid
from boss_fast.models import load_bundled
from boss_fast.trajectories import reference_solution, seeded_noise


@pytest.fixture(scope="module")
def problem():
    model = load_bundled("gmm2d_narrow")
    noise = seeded_noise((2,), 0, 64, seed=5, dtype=torch.float64)
    with torch.no_grad():
        reference = reference_solution(model, noise, rtol=1e-8, atol=1e-8)
    return model, noise, reference, uniform_grid(12)


def _brute_force(model, noise, reference, grid, steps) -> dict[tuple[int, ...], float]:
    n = len(grid)
    return {
        (0, *inner, n - 1): endpoint_error(model, noise, reference, grid[[0, *inner, n - 1]])
        for inner in itertools.combinations(range(1, n - 1), steps - 1)
    }


def test_one_knot_search_is_exhaustive(problem) -> None:
    # K = 2 has one interior knot and the search tries every position for it: it must find brute force's
    # optimum exactly.
    model, noise, reference, grid = problem
    errors = _brute_force(model, noise, reference, grid, 2)
    best = coordinate_descent(model, noise, reference, grid, 2)
    assert tuple(best.indices) == min(errors, key=errors.get)
    assert best.error == pytest.approx(min(errors.values()), rel=1e-12)


def test_descent_improves_and_is_a_local_optimum(problem) -> None:
    model, noise, reference, grid = problem
    errors = _brute_force(model, noise, reference, grid, 3)
    start = tuple(uniform_indices(len(grid), 3))
    best = coordinate_descent(model, noise, reference, grid, 3)
    assert best.error <= errors[start] and best.error >= min(errors.values()) - 1e-15
    assert best.error == pytest.approx(errors[tuple(best.indices)], rel=1e-12)
    # No single knot move lowers the error any more.
    idx = list(best.indices)
    for m in (1, 2):
        for p in range(idx[m - 1] + 1, idx[m + 1]):
            assert errors[tuple(idx[:m] + [p] + idx[m + 1 :])] >= best.error - 1e-15


def test_oracle_keeps_the_start_that_ends_lowest(problem) -> None:
    model, noise, reference, grid = problem
    errors = _brute_force(model, noise, reference, grid, 3)
    worst = max(errors, key=errors.get)
    runs, chosen = oracle(model, noise, reference, grid, 3, {"uniform": None, "worst": worst}, max_sweeps=1)
    assert set(runs) == {"uniform", "worst"}
    assert runs[chosen].error == min(run.error for run in runs.values())
    with pytest.raises(ValueError, match="init must be"):
        coordinate_descent(model, noise, reference, grid, 3, init=np.array([0, 5, 5, 11]))
