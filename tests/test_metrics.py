"""Tests of boss_fast.metrics against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from boss_fast.metrics import (
    bootstrap_statistics,
    bootstrap_weights,
    digits_fd,
    digits_features,
    endpoint_rmse,
    fd_statistic,
    frechet_distance,
    gaussian_frechet_distance,
    paired_bootstrap,
    paired_difference,
    rmse_statistic,
    seed_mean_difference,
)
from boss_fast.models import digits


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_gaussian_fd_diagonal_closed_form() -> None:
    # Commuting (diagonal) covariances: FD = |dmu|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.0])
    expected = 1.0 + 4.0 + 0.0 + (1 - 3) ** 2 + (2 - 1) ** 2 + 0.0
    assert gaussian_frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_gaussian_fd_non_commuting_2x2_closed_form() -> None:
    # For 2x2 SPD S1, S2 the eigenvalues l1, l2 of S1 S2 are positive and
    # tr (S1 S2)^(1/2) = sqrt(l1) + sqrt(l2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)).
    s1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = np.array([0.3, -1.0]), np.array([-0.2, 0.5])
    tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = float((mu1 - mu2) @ (mu1 - mu2)) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert gaussian_frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)
    # Torch inputs of another dtype give the same value.
    got = gaussian_frechet_distance(*(torch.tensor(v, dtype=torch.float32) for v in (mu1, s1, mu2, s2)))
    assert got == pytest.approx(expected, rel=1e-5)


def test_frechet_distance_of_samples_converges_to_closed_form() -> None:
    rng = np.random.default_rng(0)
    d, n = 3, 200_000
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a = rng.multivariate_normal(mu1, s1, size=n)
    b = rng.multivariate_normal(mu2, s2, size=n)
    exact = gaussian_frechet_distance(mu1, s1, mu2, s2)
    # Moment estimates from 2e5 samples are good to ~1% of the covariance scale (a few units here).
    assert frechet_distance(a, b) == pytest.approx(exact, abs=0.05 * (np.trace(s1) + np.trace(s2)))
    # And it is exactly the Gaussian formula applied to the sample moments.
    moments = gaussian_frechet_distance(
        a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    )
    assert frechet_distance(a, b) == pytest.approx(moments, rel=1e-12)


@pytest.mark.parametrize(("n", "d"), [(500, 8), (20, 64)])  # full rank, and rank-deficient (n < d)
def test_frechet_distance_self_is_zero(n: int, d: int) -> None:
    x = np.random.default_rng(1).normal(size=(n, d)) * np.linspace(0.1, 3.0, d)
    value = frechet_distance(x, x)
    # sqrt of round-off-sized eigenvalues (~1e-16 relative) leaves ~1e-8 of the trace at worst.
    assert 0.0 <= value < 1e-6 * np.trace(np.cov(x, rowvar=False))
    assert frechet_distance(torch.from_numpy(x).float(), x) < 1e-4 * np.trace(np.cov(x, rowvar=False))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 6))
def test_frechet_distance_symmetric_and_rigid_invariant(seed: int, d: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(40, d)) @ rng.normal(size=(d, d))
    b = rng.normal(size=(30, d)) + rng.normal(size=d)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    shift = rng.normal(size=d)
    fd = frechet_distance(a, b)
    assert fd >= 0.0
    scale = 1.0 + np.abs(a).max() ** 2 + np.abs(b).max() ** 2
    assert abs(frechet_distance(b, a) - fd) < 1e-9 * scale
    assert abs(frechet_distance(a @ q + shift, b @ q + shift) - fd) < 1e-9 * scale


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (np.zeros(10), np.zeros((10, 1)), "2-D"),
        (np.zeros((10, 3)), np.zeros((10, 4)), "widths differ"),
        (np.zeros((1, 3)), np.zeros((10, 3)), "at least 2"),
        (np.full((10, 3), np.nan), np.zeros((10, 3)), "non-finite"),
        (np.zeros((10, 3)), np.full((10, 3), np.inf), "non-finite"),
    ],
)
def test_frechet_distance_rejects_bad_inputs(a: np.ndarray, b: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        frechet_distance(a, b)


def test_frechet_distance_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        frechet_distance([[0.0, 1.0], [1.0, 0.0]], np.zeros((2, 2)))  # type: ignore[arg-type]


def test_endpoint_rmse() -> None:
    x = torch.zeros(2, 3, 4)
    ref = torch.full((2, 3, 4), 2.0)
    ref[0] = 0.0
    assert endpoint_rmse(x, ref) == pytest.approx(math.sqrt(2.0))  # half the elements differ by 2
    assert endpoint_rmse(ref.numpy(), ref) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        endpoint_rmse(x, ref[:1])
    with pytest.raises(ValueError, match="non-finite"):
        endpoint_rmse(x, torch.full_like(ref, float("nan")))
    with pytest.raises(ValueError, match="empty"):
        endpoint_rmse(torch.zeros(0, 3), torch.zeros(0, 3))


def test_digits_fd() -> None:
    train, _ = digits("train")
    test, _ = digits("test")
    assert digits_features(test).shape == (297, 64)
    assert digits_fd(test) < 1e-6  # the default reference is the held-out split itself
    # Real digits against held-out digits: the finite-sample floor; noise is far away.
    fd_real = digits_fd(train[:297])
    fd_noise = digits_fd(torch.randn(297, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert fd_real < 0.1 * fd_noise, (fd_real, fd_noise)
    # numpy and (N, 8, 8) inputs; values beyond the pixel range are clamped.
    assert digits_fd(train[:297, 0].numpy(), reference=test) == pytest.approx(fd_real, rel=1e-6)
    overshoot = train[:297].clone()
    overshoot[overshoot == 1.0] = 5.0
    assert digits_fd(overshoot) == pytest.approx(digits_fd(train[:297]), rel=1e-9)
    with pytest.raises(ValueError, match="shape"):
        digits_fd(torch.zeros(10, 1, 7, 7))
    with pytest.raises(ValueError, match="non-finite"):
        digits_fd(torch.full((10, 1, 8, 8), float("nan")))


# From test_demo.py


def test_bootstrap_weights_are_resampling_counts() -> None:
    w = bootstrap_weights(50, 200, seed=3)
    assert w.shape == (200, 50) and np.all(w.sum(axis=1) == 50) and np.all(w >= 0)
    np.testing.assert_array_equal(w, bootstrap_weights(50, 200, seed=3))
    assert not np.array_equal(w, bootstrap_weights(50, 200, seed=4))


def test_paired_bootstrap_known_cases() -> None:
    rng = np.random.default_rng(0)
    e = rng.exponential(size=2000)
    w = bootstrap_weights(2000, 1000, seed=0)
    # b is a exactly scaled per sample: the RMSE ratio is the same in every resample, so the paired interval
    # of the difference collapses around its estimate, where an unpaired one would not.
    d = paired_bootstrap(4.0 * e, e, rmse_statistic, w)
    rmse = np.sqrt(e.mean())
    assert d.estimate == pytest.approx(rmse)
    assert d.low < d.estimate < d.high and d.significant
    # Identical schedules: difference and interval exactly 0, not significant.
    z = paired_bootstrap(e, e, rmse_statistic, w)
    assert (z.estimate, z.low, z.high, z.significant) == (0.0, 0.0, 0.0, False)
    # Two independent draws of one distribution: the 95% interval covers 0 (this seed; the estimate is small).
    f = paired_bootstrap(rng.exponential(size=2000), e, rmse_statistic, w)
    assert f.low < 0 < f.high and not f.significant


def test_statistics_computed_once_pair_like_paired_bootstrap() -> None:
    # The demo computes each schedule's bootstrap statistics once and pairs them with the baseline's: the
    # result must be the paired bootstrap's, for RMSE and for FD.
    rng = np.random.default_rng(2)
    w = bootstrap_weights(300, 100, seed=1)
    a, b = rng.exponential(size=300), rng.exponential(size=300) * 1.1
    sa, sb = bootstrap_statistics(a, rmse_statistic, w), bootstrap_statistics(b, rmse_statistic, w)
    assert sa.shape == (101,) and sa[0] == pytest.approx(np.sqrt(a.mean()))
    got, want = paired_difference(sa, sb), paired_bootstrap(a, b, rmse_statistic, w)
    assert got == pytest.approx(want)
    fd = fd_statistic(rng.normal(size=(400, 3)))
    fa, fb = rng.normal(size=(300, 3)) + 0.3, rng.normal(size=(300, 3))
    got = paired_difference(bootstrap_statistics(fa, fd, w), bootstrap_statistics(fb, fd, w))
    assert got == pytest.approx(paired_bootstrap(fa, fb, fd, w))
    with pytest.raises(ValueError, match="same weights"):
        paired_difference(sa, sa[:-1])
    with pytest.raises(ValueError, match=r"weights must have shape \(R, 300\)"):
        bootstrap_statistics(a, rmse_statistic, w[:, :10])


def test_seed_mean_difference_covers_the_runs_spread() -> None:
    rng = np.random.default_rng(3)
    w = bootstrap_weights(500, 400, seed=0)
    e = rng.exponential(size=(4, 500))
    # Each run's paired interval excludes 0, two above and two below: the runs disagree, and the mean over
    # runs (0 by construction) gets an interval that covers 0 and is wider than any run's own.
    scale = np.array([1.2, 1.3, 1 / 1.2, 1 / 1.3])
    a = np.stack([bootstrap_statistics(c * r, rmse_statistic, w) for c, r in zip(scale, e, strict=True)])
    b = np.stack([bootstrap_statistics(r, rmse_statistic, w) for r in e])
    runs = [paired_difference(x, y) for x, y in zip(a, b, strict=True)]
    assert [r.low > 0 for r in runs] == [True, True, False, False] and all(r.significant for r in runs)
    d = seed_mean_difference(a, b)
    assert d.estimate == pytest.approx(np.mean([r.estimate for r in runs]))
    assert d.low < 0 < d.high and not d.significant
    assert d.high - d.low > max(r.high - r.low for r in runs)
    # One run: exactly that run's paired interval.
    assert seed_mean_difference(a[:1], b[:1]) == paired_difference(a[0], b[0])
    # No held-out spread (every resample equal to the full set): the interval is the runs' bootstrap alone,
    # within the runs' range, and the same for the same seed.
    flat = np.repeat(np.array([[1.0], [2.0], [6.0]]), 401, axis=1)
    f = seed_mean_difference(flat, np.zeros_like(flat))
    assert f.estimate == 3.0 and 1.0 <= f.low < 3.0 < f.high <= 6.0
    assert seed_mean_difference(flat, np.zeros_like(flat)) == f
    assert seed_mean_difference(flat, np.zeros_like(flat), seed=1) != f


@pytest.mark.parametrize(
    ("a", "b", "level", "match"),
    [
        (np.zeros((2, 5)), np.zeros((3, 5)), 0.95, "same weights"),
        (np.zeros(5), np.zeros(5), 0.95, "runs, R"),
        (np.zeros((2, 1)), np.zeros((2, 1)), 0.95, "runs, R"),
        (np.zeros((2, 5)), np.zeros((2, 5)), 1.0, "level must be in"),
    ],
)
def test_seed_mean_difference_refuses_bad_input(a, b, level, match) -> None:
    with pytest.raises(ValueError, match=match):
        seed_mean_difference(a, b, level=level)


def test_paired_bootstrap_interval_matches_the_normal_theory() -> None:
    # Mean of paired differences of independent unit normals: the 95% interval of the difference of the
    # (squared-error) means is about +-1.96 sqrt(2 / n) wide; the bootstrap must agree within ~15%.
    rng = np.random.default_rng(1)
    n = 4000
    a, b = rng.normal(size=n) + 10.0, rng.normal(size=n) + 10.0

    def mean(values, weights):
        return weights @ values / weights.sum(axis=1)

    d = paired_bootstrap(a, b, mean, bootstrap_weights(n, 2000, seed=2))
    assert d.estimate == pytest.approx(a.mean() - b.mean())
    assert (d.high - d.low) == pytest.approx(2 * 1.96 * np.sqrt(2.0 / n), rel=0.15)


def test_fd_statistic_equals_frechet_distance() -> None:
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(300, 6))
    feats = rng.normal(size=(500, 6)) * 1.3 + 2.0
    stat = fd_statistic(ref)
    w = bootstrap_weights(500, 4, seed=0)
    values = stat(feats, w)
    for r in range(4):
        resampled = np.repeat(feats, w[r].astype(int), axis=0)
        assert values[r] == pytest.approx(frechet_distance(resampled, ref), rel=1e-9)
    assert stat(feats, np.ones((1, 500)))[0] == pytest.approx(frechet_distance(feats, ref), rel=1e-9)


def test_paired_bootstrap_refuses_bad_input() -> None:
    w = bootstrap_weights(10, 5)
    with pytest.raises(ValueError, match="one shape"):
        paired_bootstrap(np.ones(10), np.ones(9), rmse_statistic, w)
    with pytest.raises(ValueError, match="weights"):
        paired_bootstrap(np.ones(8), np.ones(8), rmse_statistic, w)
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap(np.ones(10), np.ones(10), rmse_statistic, w, level=1.0)
