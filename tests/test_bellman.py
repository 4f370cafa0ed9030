"""The Bellman DP: each backend against brute force, the NumPy reference and itself; invariants; bad input."""

import itertools
import math
import os
import warnings

import numpy as np
import pytest
from _helpers import brute_local_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import boss_fast as bf
from boss_fast import _backends
from boss_fast.bellman import bellman_table_reference

BACKENDS = bf.dp_backends()


def brute_force(cost: np.ndarray, steps: int, discount: float = 1.0) -> tuple[float, tuple[int, ...]]:
    """The least-cost path by enumerating every one; among equal costs, the lexicographically smallest."""
    n = cost.shape[0]
    best = (math.inf, ())
    for interior in itertools.combinations(range(1, n - 1), steps - 1):
        path = (0, *interior, n - 1)
        total = sum(discount**m * cost[a, b] for m, (a, b) in enumerate(itertools.pairwise(path)))
        if total < best[0]:  # combinations come in lexicographic order: strict '<' keeps the first
            best = (total, path)
    return best


def path_cost(cost: np.ndarray, indices, discount: float = 1.0) -> float:
    return sum(discount**m * cost[a, b] for m, (a, b) in enumerate(itertools.pairwise(indices)))


@pytest.fixture(params=BACKENDS, scope="module")
def backend(request):
    return request.param


def test_backends_listed_fastest_first():
    assert BACKENDS == tuple(b for b in _backends.DP_BACKENDS if b in BACKENDS)
    assert "numpy" in BACKENDS


@pytest.mark.skipif(
    os.environ.get("BOSS_FAST_REQUIRE_CPP") != "1", reason="only where the C++ build is required"
)
def test_cpp_backend_built_where_required():
    assert "cpp" in BACKENDS, _backends._load("cpp")[1]


# Small integers make ties common and every sum exact, so "the smallest next index" is checkable exactly.
int_matrices = st.integers(3, 8).flatmap(
    lambda n: arrays(np.float64, (n, n), elements=st.integers(0, 3).map(float))
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cost=int_matrices, data=st.data())
def test_matches_brute_force_with_ties(backend, cost, data):
    n = cost.shape[0]
    steps = data.draw(st.integers(1, n - 1))
    discount = data.draw(st.sampled_from([1.0, 0.5, 2.0]))  # powers of two keep the sums exact
    path = bf.bellman.bellman_path(cost, steps, discount=discount, backend=backend)
    want_cost, want_path = brute_force(cost, steps, discount)
    assert path.cost == want_cost
    assert tuple(path.indices.tolist()) == want_path


float_matrices = st.integers(2, 8).flatmap(
    lambda n: arrays(
        np.float64,
        (n, n),
        elements=st.one_of(
            st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
            st.just(0.0),
            st.floats(1e100, 1e150),  # huge, but no path sum overflows
        ),
    )
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cost=float_matrices, data=st.data())
def test_cost_is_optimal_on_arbitrary_floats(backend, cost, data):
    n = cost.shape[0]
    steps = data.draw(st.integers(1, n - 1))
    discount = data.draw(st.sampled_from([1.0, 0.9]))
    path = bf.bellman.bellman_path(cost, steps, discount=discount, backend=backend)
    want_cost, _ = brute_force(cost, steps, discount)
    # Rounding differs between the DP's nesting and the brute force's sum: compare with the sums' scale.
    scale = np.abs(cost).max() * steps
    assert path.cost == pytest.approx(want_cost, abs=1e-12 * scale)
    assert path_cost(cost, path.indices, discount) == pytest.approx(want_cost, abs=1e-12 * scale)


@pytest.mark.parametrize("n, max_steps", [(2, 1), (3, 2), (17, 16), (64, 9), (129, 40), (300, 30)])
@pytest.mark.parametrize("discount", [1.0, 0.8])
def test_table_matches_numpy_reference_bitwise(backend, n, max_steps, discount):
    rng = np.random.default_rng(n)
    cost = rng.random((n, n))
    want = bellman_table_reference(cost, max_steps, discount)
    got = _backends.dp_kernel(backend)[1](cost, max_steps, discount)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[2] == want[2] == -1


def test_table_ties_match_reference(backend):
    # A constant matrix: every path of a budget ties, and each argmin must be the smallest index.
    cost = np.ones((200, 200))
    want = bellman_table_reference(cost, 12)
    got = _backends.dp_kernel(backend)[1](cost, 12, 1.0)
    np.testing.assert_array_equal(got[1], want[1])
    assert bf.bellman.bellman_path(cost, 3, backend=backend).indices.tolist() == [0, 1, 2, 199]


@pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ extension not built")
@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@pytest.mark.parametrize("n, max_steps", [(6, 5), (70, 13), (257, 24)])
def test_cpp_every_vector_path_and_thread_count_bitwise(isa, threads, n, max_steps):
    """Each SIMD path (the ones this CPU can run) and any thread count give the reference's table exactly,
    including its smallest-index tie-breaking and the row of the first non-finite entry."""
    from boss_fast import _C

    rng = np.random.default_rng(n)
    for cost in (rng.random((n, n)), rng.integers(0, 3, (n, n)).astype(float)):
        want = bellman_table_reference(cost, max_steps, 0.9)
        try:
            got = _C.bellman_table(cost, max_steps, 0.9, threads, isa)
        except RuntimeError as err:
            pytest.skip(str(err))  # this CPU lacks the instruction set
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        cost[n // 3, n // 2] = np.nan
        cost[n // 2, n - 1] = np.inf
        assert _C.bellman_table(cost, max_steps, 0.9, threads, isa)[2] == n // 3


def test_every_budget_from_one_table_equals_single_budget(backend):
    cost = np.random.default_rng(1).random((90, 90)) ** 2
    paths = bf.bellman_paths(cost, max_steps=15, backend=backend)
    assert [p.steps for p in paths] == list(range(1, 16))
    for k, p in enumerate(paths, start=1):
        single = bf.bellman.bellman_path(cost, k, backend=backend)
        assert p.cost == single.cost
        np.testing.assert_array_equal(p.indices, single.indices)


@pytest.mark.parametrize("discount", [1.0, 0.7, 1.3])
def test_path_invariants(backend, discount):
    n = 57
    cost = np.random.default_rng(2).random((n, n))
    for k in (1, 2, 7, n - 1):
        p = bf.bellman.bellman_path(cost, k, discount=discount, backend=backend)
        assert p.indices.dtype == np.int64
        assert len(p.indices) == k + 1 and p.steps == k
        assert p.indices[0] == 0 and p.indices[-1] == n - 1
        assert np.all(np.diff(p.indices) > 0)
        assert p.cost == pytest.approx(path_cost(cost, p.indices, discount), rel=1e-12)
        assert not p.indices.flags.writeable


def test_closed_form_equal_steps_are_optimal(backend):
    # cost = (t_j - t_i)^2 is convex in the step length: with a budget dividing the grid, equal steps win.
    t = np.linspace(0, 1, 13)
    cost = (t[None, :] - t[:, None]) ** 2
    assert bf.bellman.bellman_path(cost, 4, backend=backend).indices.tolist() == [0, 3, 6, 9, 12]
    assert bf.bellman.bellman_path(cost, 4, backend=backend).cost == pytest.approx(4 * 0.25**2)


def test_discount_changes_the_answer(backend):
    # Two 2-step paths: via 1 costs 10 then 0, via 2 costs 0 then 10. Undiscounted they tie (the smaller index
    # wins); with discount < 1 the expensive step goes last, with discount > 1 first.
    cost = np.full((4, 4), 100.0)
    cost[0, 1], cost[1, 3] = 10.0, 0.0
    cost[0, 2], cost[2, 3] = 0.0, 10.0
    assert bf.bellman.bellman_path(cost, 2, backend=backend).indices.tolist() == [0, 1, 3]
    assert bf.bellman.bellman_path(cost, 2, discount=0.5, backend=backend).indices.tolist() == [0, 2, 3]
    assert bf.bellman.bellman_path(cost, 2, discount=2.0, backend=backend).indices.tolist() == [0, 1, 3]
    assert bf.bellman.bellman_path(cost, 2, discount=0.5, backend=backend).cost == 5.0


def test_lower_triangle_and_diagonal_are_ignored(backend):
    cost = np.random.default_rng(3).random((30, 30))
    dirty = cost.copy()
    dirty[np.tril_indices(30)] = np.nan
    a = bf.bellman.bellman_path(cost, 5, backend=backend)
    b = bf.bellman.bellman_path(dirty, 5, backend=backend)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.cost == b.cost


@pytest.mark.parametrize(
    "convert",
    [
        lambda c: c.tolist(),
        lambda c: c.astype(np.float32),
        lambda c: np.asfortranarray(c),
        lambda c: np.repeat(np.repeat(c, 2, axis=0), 2, axis=1)[::2, ::2],  # a strided view
        lambda c: (c * 1000).astype(np.int64),
    ],
    ids=["list", "float32", "fortran", "strided", "int64"],
)
def test_array_likes_are_converted(backend, convert):
    cost = np.random.default_rng(4).random((40, 40))
    converted = convert(cost)
    want = bf.bellman.bellman_path(np.array(converted, dtype=np.float64), 6, backend="numpy")
    got = bf.bellman.bellman_path(converted, 6, backend=backend)
    np.testing.assert_array_equal(got.indices, want.indices)
    assert got.cost == want.cost


@pytest.mark.parametrize(
    "cost, match",
    [
        (np.ones(5), r"2-D"),
        (np.ones((2, 3, 3)), r"2-D"),
        (np.ones((4, 5)), r"square"),
        (np.ones((1, 1)), r"at least 2 grid points"),
        (np.array([["a", "b"], ["c", "d"]]), r"real numeric"),
        (np.ones((3, 3), dtype=complex), r"real numeric"),
    ],
)
def test_bad_cost_shape_or_dtype(backend, cost, match):
    with pytest.raises(ValueError, match=match):
        bf.bellman.bellman_path(cost, 1, backend=backend)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_upper_entry_is_named(backend, bad):
    cost = np.random.default_rng(5).random((50, 50))
    cost[17, 33] = bad
    cost[30, 41] = bad
    with pytest.raises(ValueError, match=r"cost\[17, 33\]"):
        bf.bellman.bellman_path(cost, 3, backend=backend)
    with pytest.raises(ValueError, match=r"cost\[17, 33\]"):
        bf.bellman_paths(cost, 1, backend=backend)


def test_overflowing_path_sum_is_refused(backend):
    cost = np.full((5, 5), 1e308)
    with pytest.raises(ValueError, match="overflows"):
        bf.bellman.bellman_path(cost, 4, backend=backend)


@pytest.mark.parametrize(
    "steps, error, match",
    [
        (0, ValueError, r"\[1, 9\]"),
        (10, ValueError, r"\[1, 9\]"),
        (-1, ValueError, r"\[1, 9\]"),
        (2.5, TypeError, "integer"),
        (3.0, TypeError, "integer"),
        ("3", TypeError, "integer"),
        (True, TypeError, "integer"),
        (None, TypeError, "integer"),
    ],
)
def test_bad_steps(backend, steps, error, match):
    """One rule across the package (check_int): TypeError for a non-integer, ValueError out of range."""
    cost = np.ones((10, 10))
    with pytest.raises(error, match=f"steps.*{match}|{match}"):
        bf.bellman.bellman_path(cost, steps, backend=backend)
    with pytest.raises(error, match=f"max_steps.*{match}|{match}"):
        bf.bellman_paths(cost, steps, backend=backend)


def test_numpy_integer_steps_accepted(backend):
    assert bf.bellman.bellman_path(np.ones((5, 5)), np.int32(2), backend=backend).steps == 2


@pytest.mark.parametrize("discount", [0.0, -1.0, np.nan, np.inf, "x", None])
def test_bad_discount(backend, discount):
    with pytest.raises(ValueError, match="discount"):
        bf.bellman.bellman_path(np.ones((5, 5)), 2, discount=discount, backend=backend)


@pytest.mark.parametrize("name", ["fortran", "", "CPP", 3])
def test_unknown_backend(name):
    with pytest.raises(ValueError, match="unknown backend"):
        bf.bellman.bellman_path(np.ones((5, 5)), 2, backend=name)


@pytest.fixture
def no_compiled_backends(monkeypatch):
    """Pretend neither the C++ extension nor Numba is importable here."""
    real = _backends._load

    def fake(name):
        return (None, "ImportError: pretend") if name in ("cpp", "numba") else real(name)

    monkeypatch.setattr(_backends, "_load", fake)
    monkeypatch.setattr(_backends, "_warned_fallback", False)


def test_explicit_unavailable_backend_raises(no_compiled_backends):
    with pytest.raises(RuntimeError, match="'cpp' Bellman backend is not available.*pretend"):
        bf.bellman.bellman_path(np.ones((5, 5)), 2, backend="cpp")
    assert bf.dp_backends() == ("numpy",)


def test_auto_falls_back_and_warns_once(no_compiled_backends):
    with pytest.warns(RuntimeWarning, match="using the 'numpy' Bellman backend"):
        a = bf.bellman.bellman_path(np.ones((5, 5)), 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = bf.bellman.bellman_path(np.ones((5, 5)), 2)  # no second warning
    assert a.indices.tolist() == b.indices.tolist() == [0, 1, 4]


@pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ extension not built")
def test_cpp_binding_checks_its_own_boundary():
    from boss_fast import _C

    with pytest.raises(ValueError, match="square"):
        _C.bellman_table(np.ones((3, 4)), 1)
    with pytest.raises(ValueError, match="max_steps"):
        _C.bellman_table(np.ones((3, 3)), 3)
    with pytest.raises(ValueError, match="discount"):
        _C.bellman_table(np.ones((3, 3)), 1, -1.0)
    with pytest.raises(ValueError, match="isa"):
        _C.bellman_table(np.ones((3, 3)), 1, 1.0, 0, "sse9")


# ---------------------------------------------------------------------------- a free start (start_costs)


@pytest.mark.parametrize("backend", bf.dp_backends())
@pytest.mark.parametrize("discount", [1.0, 0.8, 1.15])
def test_local_dp_with_start_costs_against_brute_force(backend, discount):
    """The local DP is exact: with start costs its path is the least of every (start, knots) path."""
    rng = np.random.default_rng(0)
    n = 9
    cost = np.triu(rng.uniform(0.0, 1.0, (n, n)), 1)
    e0 = np.append(np.sort(rng.uniform(0.0, 0.6, n - 3)), [np.inf] * 3)  # a cap at 5
    e0[0] = 0.0
    paths = bf.bellman.bellman_paths(cost, 5, discount=discount, backend=backend, start_costs=e0)
    for path in paths:
        total, indices = brute_local_path(cost, e0, path.steps, discount)
        assert path.indices.tolist() == indices and path.cost == pytest.approx(total, rel=1e-12)
    pinned = bf.bellman.bellman_paths(cost, 5, discount=discount, backend=backend)
    assert [p.indices.tolist() for p in pinned] == [
        p.indices.tolist() for p in bf.bellman.bellman_paths(cost, 5, discount=discount, backend=backend,
                                                             start_costs=[0.0] + [np.inf] * (n - 1))
    ]  # fmt: skip


def test_bad_start_costs_are_refused():
    cost = np.triu(np.ones((4, 4)), 1)
    bad_values = [
        ([0.0, 1.0], r"shape \(4,\)"),
        ([0.0, -1.0, 0.0, 0.0], ">= 0"),
        ([np.inf, 0.0, 0.0, 0.0], "finite at point 0"),
        ([0.0, np.nan, 0, 0], ">= 0"),
    ]
    for bad, match in bad_values:
        with pytest.raises(ValueError, match=match):
            bf.bellman.bellman_paths(cost, 2, start_costs=bad)
