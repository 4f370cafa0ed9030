"""Base time grids for the teacher trajectory (BOSS stage 1, step 1): small pure functions.

Every grid is a strictly increasing float64 numpy array of ``n + 1`` flow times in [0, 1]
(t = 0 noise, t = 1 data; diffusers' sigma is 1 - t). The BOSS reference uses a uniform grid with
n = 100 intervals from 1e-3 to 1 (``uniform_grid(100, t_min=1e-3)``); the default here starts at 0.

>>> uniform_grid(4)
array([0.  , 0.25, 0.5 , 0.75, 1.  ])
"""

from __future__ import annotations

import numpy as np

from boss_fast._validation import as_times, check_float, check_int

__all__ = ["edm_grid", "resolve_grid", "shifted_grid", "uniform_grid"]


def uniform_grid(n: int, t_min: float = 0.0, t_max: float = 1.0) -> np.ndarray:
    """``n`` equal intervals from ``t_min`` to ``t_max``: ``n + 1`` float64 times, endpoints exact.

    Args:
        n: number of intervals, >= 1.
        t_min, t_max: first and last time, ``0 <= t_min < t_max <= 1``.

    Example:
        >>> uniform_grid(4).tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    n = check_int(n, "n")
    lo, hi = check_float(t_min, "t_min"), check_float(t_max, "t_max")
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min = {lo}, t_max = {hi}")
    # linspace sets both endpoints exactly; as_times catches an interval too small for n steps in float64.
    return as_times(np.linspace(lo, hi, n + 1), name="uniform_grid")


def shifted_grid(n: int, shift: float = 3.0) -> np.ndarray:
    """SD3-style time-shifted grid (Esser et al., 2024): ``n + 1`` float64 times from 0 to 1.

    With s = 1 - t uniform on [0, 1] (diffusers' sigma), the shifted sigma is
    ``s' = shift * s / (1 + (shift - 1) * s)`` and the time is ``t = 1 - s'``. shift > 1 puts more points
    near the noise end (t = 0), shift < 1 near the data end, shift = 1 is the uniform grid.

    Args:
        n: number of intervals, >= 1.
        shift: > 0.

    Example:
        >>> shifted_grid(2, shift=3.0).tolist()  # sigma = 1 - t shifted: 3 s / (1 + 2 s)
        [0.0, 0.25, 1.0]
    """
    n = check_int(n, "n")
    shift = check_float(shift, "shift")
    if shift <= 0.0:
        raise ValueError(f"shift must be > 0, got {shift}")
    s = np.linspace(1.0, 0.0, n + 1)
    t = 1.0 - shift * s / (1.0 + (shift - 1.0) * s)
    t[0], t[-1] = 0.0, 1.0  # s = 1 maps to exactly 1 only up to rounding
    return as_times(t, name="shifted_grid")


def edm_grid(n: int, rho: float = 7.0, sigma_min: float = 0.002, sigma_max: float = 80.0) -> np.ndarray:
    """Karras/EDM rho schedule (Karras et al., 2022, eq. 5) mapped to flow time: ``n + 1`` float64 times.

    EDM's state is ``data + sigma * noise``; dividing the flow state ``x_t = t * data + (1 - t) * noise`` by t
    gives the same with ``sigma = (1 - t) / t``, hence ``t = 1 / (1 + sigma)``. The grid is t = 0
    (sigma = inf, pure noise), then ``n - 1`` Karras sigmas
    ``(sigma_max**(1/rho) + k / (n - 2) * (sigma_min**(1/rho) - sigma_max**(1/rho)))**rho``, k = 0 .. n - 2
    (sigma_max alone when n = 2), then t = 1 (sigma = 0), so both endpoints are exact. n = 1 gives [0, 1].

    Args:
        n: number of intervals, >= 1.
        rho: > 0; larger concentrates points near the data end.
        sigma_min, sigma_max: ``0 < sigma_min < sigma_max``, the EDM noise levels of the interior points.

    Example:
        >>> t = edm_grid(4)
        >>> len(t), float(t[0]), float(t[-1]), bool((t[1:] > t[:-1]).all())
        (5, 0.0, 1.0, True)
    """
    n = check_int(n, "n")
    rho = check_float(rho, "rho")
    lo, hi = check_float(sigma_min, "sigma_min"), check_float(sigma_max, "sigma_max")
    if rho <= 0.0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if not 0.0 < lo < hi:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min = {lo}, sigma_max = {hi}")
    interior = n - 1
    ramp = np.linspace(0.0, 1.0, interior) if interior > 1 else np.zeros(interior)
    sigmas = (hi ** (1.0 / rho) + ramp * (lo ** (1.0 / rho) - hi ** (1.0 / rho))) ** rho
    t = np.concatenate(([0.0], 1.0 / (1.0 + sigmas), [1.0]))
    return as_times(t, name="edm_grid")


def resolve_grid(grid: object, name: str = "grid") -> np.ndarray:
    """An int n means ``uniform_grid(n)``; anything else is explicit grid times, validated (``as_times``)."""
    if isinstance(grid, int | np.integer) and not isinstance(grid, bool | np.bool_):
        return uniform_grid(int(grid))
    return as_times(grid, name)
