"""Sample-quality metrics: endpoint RMSE, Frechet distance, and the Frechet distance of 8x8 digits in the
bundled classifier's features (an FID analogue for the shipped digits DiT); paired-bootstrap intervals for the
difference of two sample sets drawn from the same noises.

All maths is float64 NumPy; inputs may be NumPy arrays or torch tensors (any device, any float dtype).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch

from boss_fast._bootstrap import (
    PairedDifference,
    as_float64,
    bootstrap_statistics,
    bootstrap_weights,
    paired_bootstrap,
    paired_difference,
    rmse_statistic,
    seed_mean_difference,
)
from boss_fast.models import DIGITS_SHAPE, digits, load_bundled

__all__ = [
    "PairedDifference",
    "bootstrap_statistics",
    "bootstrap_weights",
    "digits_fd",
    "digits_features",
    "endpoint_rmse",
    "fd_statistic",
    "frechet_distance",
    "gaussian_frechet_distance",
    "paired_bootstrap",
    "paired_difference",
    "rmse_statistic",
    "seed_mean_difference",
]

ArrayLike = np.ndarray | torch.Tensor


def _sqrtm_psd(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix through its eigen-decomposition; round-off
    negative eigenvalues are clipped to 0."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def gaussian_frechet_distance(mu1: ArrayLike, s1: ArrayLike, mu2: ArrayLike, s2: ArrayLike) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, s1) and N(mu2, s2):
    |mu1 - mu2|^2 + tr(s1 + s2 - 2 (s1 s2)^(1/2)).

    The trace of (s1 s2)^(1/2) is computed as the sum of square roots of the eigenvalues of the symmetric
    PSD matrix s1^(1/2) s2 s1^(1/2) (similar to s1 s2), so only ``eigh`` of symmetric matrices is needed:
    no scipy, and no complex round-off from a general ``sqrtm``.

    Args:
        mu1, mu2: means (D,). s1, s2: symmetric PSD covariances (D, D).

    Returns:
        The distance as a non-negative float (round-off below 0 is clipped).
    """
    mu1, mu2 = as_float64(mu1, "mu1"), as_float64(mu2, "mu2")
    s1, s2 = as_float64(s1, "s1"), as_float64(s2, "s2")
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.ndim != 1 or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"expected means (D,) and covariances (D, D) of one D, got {mu1.shape}, {s1.shape}, "
            f"{mu2.shape}, {s2.shape}"
        )
    root1 = _sqrtm_psd(0.5 * (s1 + s1.T))
    inner = root1 @ (0.5 * (s2 + s2.T)) @ root1
    eig = np.linalg.eigvalsh(0.5 * (inner + inner.T))
    tr_cross = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff) + float(np.trace(s1)) + float(np.trace(s2)) - 2.0 * tr_cross
    return max(value, 0.0)


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (the FID formula).

    Args:
        feats_a: (N, D) features, N >= 2. feats_b: (M, D) features, M >= 2 (N and M may differ).

    Returns:
        |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) with unbiased (N - 1) sample covariances.
        FD(x, x) is 0 up to round-off (about 1e-12 relative to tr S in float64).

    Raises:
        ValueError: inputs not 2-D, different feature widths, fewer than 2 rows, or non-finite values.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> a = rng.normal(size=(500, 3))
        >>> round(frechet_distance(a, a), 9)
        0.0
    """
    a, b = as_float64(feats_a, "feats_a"), as_float64(feats_b, "feats_b")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shapes {a.shape} and {b.shape}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature widths differ: {a.shape[1]} vs {b.shape[1]}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(
            f"need at least 2 samples per set for a covariance, got {a.shape[0]} and {b.shape[0]}"
        )
    return gaussian_frechet_distance(
        a.mean(axis=0), np.cov(a, rowvar=False, ddof=1).reshape(a.shape[1], a.shape[1]),
        b.mean(axis=0), np.cov(b, rowvar=False, ddof=1).reshape(b.shape[1], b.shape[1]),
    )  # fmt: skip


def endpoint_rmse(x: ArrayLike, ref: ArrayLike) -> float:
    """Root mean square of ``x - ref`` over all elements: sqrt(mean((x - ref)^2)), both of one shape
    (e.g. few-step samples and reference samples from the same noise, (B, ...)).

    Raises:
        ValueError: shapes differ, inputs are empty, or contain non-finite values.
    """
    a, b = as_float64(x, "x"), as_float64(ref, "ref")
    if a.shape != b.shape:
        raise ValueError(f"x and ref must have the same shape, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("x and ref are empty")
    return float(np.sqrt(np.mean((a - b) ** 2)))


@functools.lru_cache(maxsize=1)
def _classifier() -> torch.nn.Module:
    return load_bundled("digits_classifier", device="cpu", dtype=torch.float32)


# Features are computed in chunks so that memory stays flat for large sample sets.
_FEATURE_BATCH = 1024


@torch.no_grad()
def digits_features(images: ArrayLike) -> np.ndarray:
    """Penultimate features of the bundled digits classifier.

    Args:
        images: (N, 1, 8, 8) or (N, 8, 8) digits in the [-1, 1] scaling of ``boss_fast.models.digits``.
            Values are clamped to [-1, 1] first, like pixel quantisation in FID pipelines: samplers may
            overshoot the pixel range and the classifier never saw such values.

    Returns:
        (N, 64) float64 features.
    """
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(as_float64(images, "images"))
    if not torch.isfinite(x).all():
        raise ValueError("images contains non-finite values (NaN or inf)")
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or tuple(x.shape[1:]) != DIGITS_SHAPE:
        raise ValueError(f"digits images must have shape (N, 1, 8, 8) or (N, 8, 8), got {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float32).clamp(-1.0, 1.0)
    net = _classifier()
    chunks = [net.features(x[i : i + _FEATURE_BATCH]) for i in range(0, x.shape[0], _FEATURE_BATCH)]
    return torch.cat(chunks).double().numpy() if chunks else np.zeros((0, net.n_features))


def digits_fd(samples: ArrayLike, reference: ArrayLike | None = None) -> float:
    """Frechet distance between digit ``samples`` and ``reference`` digits in the bundled classifier's
    64-d penultimate features (an FID analogue on 8x8 digits).

    Args:
        samples: (N, 1, 8, 8) or (N, 8, 8) images in [-1, 1], N >= 2.
        reference: images likewise; default the 297 held-out digits (``digits("test")``).

    Returns:
        The distance (float). It is biased upward for small N (the covariance estimates are noisy), so
        compare values computed with the same N.
    """
    if reference is None:
        reference = digits("test")[0]
    return frechet_distance(digits_features(samples), digits_features(reference))


def fd_statistic(reference_features: ArrayLike) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A weighted statistic: features (n, D) and (R, n) counts -> (R,) Frechet distances of the weighted
    sets to fixed reference features (the reference is not resampled). With unit weights it is
    :func:`frechet_distance` (unbiased covariance, weights summing to n). The reference's covariance root is
    computed once; the R covariances come from one product with the per-sample outer products and the R
    eigen-decompositions run as one batched call."""
    ref = as_float64(reference_features, "reference_features")
    mu_ref, cov_ref = ref.mean(axis=0), np.cov(ref, rowvar=False, ddof=1)
    root = _sqrtm_psd(0.5 * (cov_ref + cov_ref.T))
    tr_ref = float(np.trace(cov_ref))

    def statistic(feats: np.ndarray, weights: np.ndarray) -> np.ndarray:
        n, d = feats.shape
        # Centre on the full set's mean first: the weighted second moments then lose nothing to a large mean.
        centre = feats.mean(axis=0)
        feats = feats - centre
        total = weights.sum(axis=1)[:, None]  # (R, 1)
        mu = weights @ feats / total  # (R, D), relative to centre
        second = (weights @ (feats[:, :, None] * feats[:, None, :]).reshape(n, d * d)).reshape(-1, d, d)
        cov = (second - total[:, :, None] * mu[:, :, None] * mu[:, None, :]) / (total[:, :, None] - 1.0)
        inner = root @ cov @ root
        eig = np.linalg.eigvalsh(0.5 * (inner + inner.transpose(0, 2, 1)))
        tr_cross = np.sqrt(np.clip(eig, 0.0, None)).sum(axis=1)
        shift = ((mu + (centre - mu_ref)) ** 2).sum(axis=1)
        value = shift + np.trace(cov, axis1=1, axis2=2) + tr_ref - 2.0 * tr_cross
        return np.maximum(value, 0.0)

    return statistic
