"""Base grids: exact endpoints, closed forms, monotonicity, and precise errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boss_fast.grids import edm_grid, shifted_grid, uniform_grid


def test_uniform_grid_default_is_101_float64_times_from_0_to_1():
    grid = uniform_grid(100)
    assert grid.dtype == np.float64 and grid.shape == (101,)
    assert grid[0] == 0.0 and grid[-1] == 1.0
    np.testing.assert_allclose(np.diff(grid), 0.01, rtol=1e-12)


def test_uniform_grid_reference_range():
    grid = uniform_grid(100, t_min=1e-3)  # the BOSS reference's grid
    assert grid[0] == 1e-3 and grid[-1] == 1.0 and len(grid) == 101


def test_shifted_grid_matches_the_sd3_formula():
    n, shift = 8, 3.0
    s = 1.0 - np.arange(n + 1) / n
    expected = 1.0 - shift * s / (1.0 + (shift - 1.0) * s)
    grid = shifted_grid(n, shift)
    np.testing.assert_allclose(grid, expected, rtol=0, atol=1e-15)
    assert grid[0] == 0.0 and grid[-1] == 1.0
    # shift > 1 puts more points near the noise end: the first step is smaller than uniform's
    assert grid[1] < 1.0 / n


def test_shifted_grid_with_shift_one_is_uniform():
    np.testing.assert_allclose(shifted_grid(10, 1.0), uniform_grid(10), rtol=0, atol=1e-15)


def test_edm_grid_maps_karras_sigmas_through_t_equals_one_over_one_plus_sigma():
    n, rho, lo, hi = 6, 7.0, 0.002, 80.0
    ramp = np.linspace(0.0, 1.0, n - 1)
    sigmas = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    grid = edm_grid(n, rho, lo, hi)
    assert grid.shape == (n + 1,) and grid[0] == 0.0 and grid[-1] == 1.0
    np.testing.assert_allclose(grid[1:-1], 1.0 / (1.0 + sigmas), rtol=1e-14)
    np.testing.assert_allclose((1.0 - grid[1]) / grid[1], hi, rtol=1e-12)  # sigma = (1 - t) / t
    np.testing.assert_allclose((1.0 - grid[-2]) / grid[-2], lo, rtol=1e-9)


def test_edm_grid_small_n():
    np.testing.assert_array_equal(edm_grid(1), [0.0, 1.0])
    np.testing.assert_allclose(edm_grid(2), [0.0, 1.0 / 81.0, 1.0])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3000),
    shift=st.floats(0.05, 20.0),
    rho=st.floats(0.5, 12.0),
)
def test_grids_are_strictly_increasing_in_unit_interval(n, shift, rho):
    for grid in (uniform_grid(n), shifted_grid(n, shift), edm_grid(n, rho)):
        assert grid.shape == (n + 1,) and grid.dtype == np.float64
        assert grid[0] == 0.0 and grid[-1] == 1.0
        assert np.all(np.diff(grid) > 0)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: uniform_grid(0), ValueError, "n must be >= 1"),
        (lambda: uniform_grid(2.5), TypeError, "n must be an integer"),
        (lambda: uniform_grid(True), TypeError, "n must be an integer"),
        (lambda: uniform_grid(4, t_min=0.5, t_max=0.5), ValueError, "t_min < t_max"),
        (lambda: uniform_grid(4, t_max=1.5), ValueError, "t_max <= 1"),
        (lambda: uniform_grid(4, t_min=-0.1), ValueError, "0 <= t_min"),
        (lambda: uniform_grid(4, t_min=float("nan")), ValueError, "t_min must be finite"),
        (lambda: shifted_grid(4, 0.0), ValueError, "shift must be > 0"),
        (lambda: shifted_grid(-1), ValueError, "n must be >= 1"),
        (lambda: edm_grid(4, rho=0.0), ValueError, "rho must be > 0"),
        (lambda: edm_grid(4, sigma_min=1.0, sigma_max=1.0), ValueError, "sigma_min < sigma_max"),
        (lambda: edm_grid(4, sigma_min=0.0), ValueError, "0 < sigma_min"),
    ],
)
def test_bad_arguments_raise_naming_the_problem(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_uniform_grid_too_fine_for_float64_is_refused():
    with pytest.raises(ValueError, match="strictly increasing"):
        uniform_grid(1000, t_min=0.5, t_max=0.5 + 1e-15)
