"""Paired-bootstrap intervals for the difference of two statistics of per-sample values drawn from the same
noises (row m of each from noise m): the one home of the resampling that both the search (``num_samples``
"auto": is another round of noises worth it?) and the quality reports (``boss_fast.metrics``) use.

All maths is float64 NumPy; inputs may be NumPy arrays or torch tensors (any device, any float dtype).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "PairedDifference",
    "as_float64",
    "bootstrap_statistics",
    "bootstrap_weights",
    "paired_bootstrap",
    "paired_difference",
    "rmse_statistic",
    "seed_mean_difference",
]

ArrayLike = np.ndarray | torch.Tensor


def as_float64(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    elif isinstance(x, np.ndarray):
        x = x.astype(np.float64, copy=False)
    else:
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x


@dataclass(frozen=True)
class PairedDifference:
    """``statistic(a) - statistic(b)`` on the full samples, with a percentile bootstrap interval.

    ``low``/``high`` bound the central ``level`` interval of the difference over resamples that draw the same
    sample indices for a and b (paired: a's and b's m-th samples came from the same noise). The difference is
    significant at that level when the interval excludes 0.
    """

    estimate: float
    low: float
    high: float
    level: float
    reps: int

    @property
    def significant(self) -> bool:
        return self.low > 0.0 or self.high < 0.0


def bootstrap_weights(n: int, reps: int = 1000, seed: int = 0) -> np.ndarray:
    """(reps, n) float64 resampling counts: row r counts how often each of the n samples is drawn (with
    replacement, n draws) in resample r. Seeded; share one draw between the schedules compared so every
    difference is paired and resampled alike. Counts instead of gathered copies: a weighted statistic is one
    matrix product over all resamples (1000 resamples of 1000 64-d features would be 512 MB gathered)."""
    if n < 1 or reps < 1:
        raise ValueError(f"n and reps must be >= 1, got n={n}, reps={reps}")
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=reps).astype(np.float64)


def paired_bootstrap(
    a: ArrayLike,
    b: ArrayLike,
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray],
    weights: np.ndarray,
    *,
    level: float = 0.95,
) -> PairedDifference:
    """Paired-bootstrap interval of ``statistic(a) - statistic(b)``.

    Args:
        a, b: (n, ...) per-sample values of two schedules from the SAME n noises, row m of each from noise m
            (per-sample squared errors (n,), classifier features (n, D), ...).
        statistic: ``statistic(values, weights)`` with values (n, ...) and weights (R, n) resampling counts
            -> (R,) statistics of the R weighted sets (see :func:`rmse_statistic`, :func:`fd_statistic`).
        weights: (R, n) counts from :func:`bootstrap_weights`, applied to a and b jointly.
        level: central coverage of the percentile interval.

    Returns:
        :class:`PairedDifference`; ``estimate`` is the statistic's difference on the full sets.

    Example:
        >>> a, b = np.full(100, 4.0), np.ones(100)
        >>> d = paired_bootstrap(a, b, rmse_statistic, bootstrap_weights(100, 50))
        >>> (d.estimate, d.low, d.high)
        (1.0, 1.0, 1.0)
    """
    a, b = as_float64(a, "a"), as_float64(b, "b")
    if a.shape != b.shape or a.ndim < 1:
        raise ValueError(
            f"a and b must be per-sample values of one shape (n, ...), got {a.shape} and {b.shape}"
        )
    return paired_difference(
        bootstrap_statistics(a, statistic, weights), bootstrap_statistics(b, statistic, weights), level=level
    )


def bootstrap_statistics(
    values: ArrayLike, statistic: Callable[[np.ndarray, np.ndarray], np.ndarray], weights: np.ndarray
) -> np.ndarray:
    """(R + 1,) float64: ``statistic`` of the full set (entry 0) and of the R resamples ``weights`` (R, n)
    describes, from one call. Compute it once per schedule and pair any two with :func:`paired_difference`
    (the same ``weights`` for both): comparing S schedules with one baseline then costs S + 1 statistics,
    not 2 S."""
    values = as_float64(values, "values")
    if values.ndim < 1:
        raise ValueError(f"values must be per-sample values (n, ...), got shape {values.shape}")
    if weights.ndim != 2 or weights.shape[1] != values.shape[0]:
        raise ValueError(f"weights must have shape (R, {values.shape[0]}), got {weights.shape}")
    return np.asarray(statistic(values, np.vstack([np.ones((1, values.shape[0])), weights])), np.float64)


def paired_difference(a: np.ndarray, b: np.ndarray, *, level: float = 0.95) -> PairedDifference:
    """The paired difference of two :func:`bootstrap_statistics` results made with the same weights: the full
    sets' difference and the percentile interval of the resamples' differences."""
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise ValueError(
            f"a and b must be bootstrap_statistics of the same weights, (R + 1,), got {a.shape} and {b.shape}"
        )
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(a[1:] - b[1:], [tail, 100.0 - tail])
    return PairedDifference(float(a[0] - b[0]), float(low), float(high), level, len(a) - 1)


def seed_mean_difference(
    a: np.ndarray, b: np.ndarray, *, level: float = 0.95, seed: int = 0
) -> PairedDifference:
    """The difference of two methods' statistics averaged over independent runs (search seeds), with a
    two-level percentile interval: each resample draws the runs with replacement and, within the resample,
    the same held-out resample r for every run (the columns of ``bootstrap_statistics`` made with one
    ``weights``). It covers both sources of spread: the noises the runs searched on, which a single run's
    paired interval cannot see, and the held-out noises the schedules were judged on.

    Args:
        a, b: (S, R + 1) float64, row s the :func:`bootstrap_statistics` of run s (entry 0 the full set),
            every row made with the same weights; a's row s and b's row s paired (the same search seed).
        level: central coverage of the percentile interval.
        seed: of the runs' resampling.

    Example:
        >>> a, b = np.array([[3.0, 3.0, 3.0], [1.0, 1.0, 1.0]]), np.zeros((2, 3))
        >>> d = seed_mean_difference(a, b)
        >>> d.estimate, d.low >= 1.0, d.high <= 3.0
        (2.0, True, True)
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or a.shape != b.shape or a.shape[1] < 2:
        raise ValueError(
            "a and b must be (runs, R + 1) bootstrap_statistics of the same weights, "
            f"got {a.shape} and {b.shape}"
        )
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = a - b
    runs, reps = d.shape[0], d.shape[1] - 1
    picks = np.random.default_rng(seed).integers(0, runs, size=(reps, runs))
    resampled = d[picks, np.arange(1, reps + 1)[:, None]].mean(axis=1)
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(resampled, [tail, 100.0 - tail])
    return PairedDifference(float(d[:, 0].mean()), float(low), float(high), level, reps)


def rmse_statistic(squared_errors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """RMSE of weighted sets of per-sample mean squared errors: (n,), (R, n) -> (R,)."""
    return np.sqrt(weights @ squared_errors / weights.sum(axis=1))
