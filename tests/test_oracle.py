"""boss_fast.oracle: coordinate descent on the endpoint error over grid schedules, checked against brute force
over every grid schedule on an analytic flow, on held-out noises, and on bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from _helpers import seeded_randn

import boss_fast as bf
from boss_fast.global_objective import GlobalPass, global_paths, global_table
from boss_fast.grids import uniform_grid
from boss_fast.models import load_bundled
from boss_fast.models.gmm import eight_gaussians
from boss_fast.oracle import coordinate_descent, endpoint_error, oracle, uniform_indices
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


@pytest.mark.parametrize("steps", [2, 3, 4])
def test_the_fitted_schedule_beats_its_start_on_held_out_noises(problem, steps) -> None:
    # Fitted on 64 noises (seed 5), judged on 256 others (seed 6). Measured: the held-out error falls to
    # 0.25x (K = 2), 0.12x (K = 3) and 0.115x (K = 4) of uniform steps'; 0.5x leaves room for a refit.
    model, noise, reference, grid = problem
    held = seeded_noise((2,), 0, 256, seed=6, dtype=torch.float64)
    with torch.no_grad():
        held_ref = reference_solution(model, held, rtol=1e-8, atol=1e-8)
    start = uniform_indices(len(grid), steps)
    best = coordinate_descent(model, noise, reference, grid, steps, init=start)
    assert not np.array_equal(best.indices, start)
    fitted = endpoint_error(model, held, held_ref, grid[best.indices])
    assert fitted < 0.5 * endpoint_error(model, held, held_ref, grid[start])


def test_an_optimal_start_is_kept(problem) -> None:
    # Started at brute force's optimum, no move can help: the start comes back after one sweep.
    model, noise, reference, grid = problem
    errors = _brute_force(model, noise, reference, grid, 3)
    optimum = min(errors, key=errors.get)
    best = coordinate_descent(model, noise, reference, grid, 3, init=optimum)
    assert tuple(best.indices) == optimum and best.sweeps == 1


def test_a_window_limits_each_move(problem) -> None:
    model, noise, reference, grid = problem
    start = uniform_indices(len(grid), 3)
    best = coordinate_descent(model, noise, reference, grid, 3, init=start, window=1, max_sweeps=1)
    assert np.all(np.abs(best.indices - start) <= 1)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (
            dict(reference=torch.zeros(64, 3, dtype=torch.float64)),
            ValueError,
            "reference must have noise's shape",
        ),
        (dict(noise=torch.zeros(64, 2, dtype=torch.int64)), TypeError, "noise must be a floating"),
        (dict(grid=np.array([0.0, 0.5, 0.4, 1.0])), ValueError, "grid must be strictly increasing"),
        (dict(steps=13), ValueError, "steps must be"),
        (dict(steps=0), ValueError, "steps must be"),
        (dict(init=[0, 5, 5, 12]), ValueError, "init must be"),
        (dict(init=[0, 4, 8]), ValueError, "init must be"),
        (dict(init=[0, 4.5, 8, 12]), ValueError, "init must be"),
        (dict(max_sweeps=0), ValueError, "max_sweeps must be"),
        (dict(window=0), ValueError, "window must be"),
    ],
)
def test_bad_input_is_refused_by_name(problem, change, error, match) -> None:
    model, noise, reference, grid = problem
    args = dict(noise=noise, reference=reference, grid=grid, steps=3) | change
    kwargs = {key: args.pop(key) for key in ("init", "max_sweeps", "window") if key in args}
    with pytest.raises(error, match=match):
        coordinate_descent(model, args["noise"], args["reference"], args["grid"], args["steps"], **kwargs)


def test_oracle_needs_a_start(problem) -> None:
    model, noise, reference, grid = problem
    with pytest.raises(ValueError, match="starts must be a non-empty dict"):
        oracle(model, noise, reference, grid, 3, {})


# ---------------------------------------------------------------------------------------- a free start


def test_the_oracle_moves_a_free_start_to_the_closed_form_and_keeps_a_pinned_one():
    """v = -x, one step: the endpoint error from the noise at t is (t - e^{-1})^2 |x_0|^2 (see above); the
    oracle, moving only the start, lands on the grid point nearest e^{-1}; pinned, it cannot move at K = 1."""
    times, noise = bf.uniform_grid(40), seeded_randn(32, 3, 12)
    reference = math.exp(-1.0) * noise
    got = bf.oracle.coordinate_descent(lambda x, t: -x, noise, reference, times, 1, start="noise")
    assert got.indices.tolist() == [int(np.argmin(np.abs(times - math.exp(-1.0)))), 40]
    pinned = bf.oracle.coordinate_descent(lambda x, t: -x, noise, reference, times, 1)
    assert pinned.indices.tolist() == [0, 40] and pinned.sweeps == 1


@pytest.mark.parametrize("rule", ["noise", "scaled"])
def test_the_oracle_from_the_free_start_dp_ends_no_higher_and_is_deterministic(rule):
    noise, times = seeded_randn(48, 2, 13), bf.uniform_grid(20)
    velocity = eight_gaussians()
    reference = bf.reference_solution(velocity, noise)
    table = global_table(velocity, noise, times, 3, GlobalPass(start=rule), progress=False)
    dp = global_paths(table)[-1].indices
    dp_error = bf.oracle.endpoint_error(velocity, noise, reference, times[dp], rule)
    runs, chosen = bf.oracle.oracle(
        velocity, noise, reference, times, 3, {"dp": dp, "uniform": None}, start=rule
    )
    assert runs[chosen].error <= runs["dp"].error <= dp_error
    again, _ = bf.oracle.oracle(velocity, noise, reference, times, 3, {"dp": dp, "uniform": None}, start=rule)
    assert [(r.indices.tolist(), r.error) for r in again.values()] == [
        (r.indices.tolist(), r.error) for r in runs.values()
    ]
    with pytest.raises(ValueError, match="increasing indices from 0 to 20"):
        bf.oracle.coordinate_descent(
            velocity, noise, reference, times, 3, init=dp if dp[0] else [1, 5, 9, 20]
        )
    with pytest.raises(ValueError, match="unknown start 'late'"):
        bf.oracle.coordinate_descent(velocity, noise, reference, times, 3, start="late")
