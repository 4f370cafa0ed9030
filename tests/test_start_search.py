"""The start knot as a search variable (SearchSettings.start): the global DP's free start, against closed
forms and brute force; its evaluation count; the pinned start's bits; checkpoints and refusals."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

import boss_fast as bf
from boss_fast.global_objective import (
    GlobalPass,
    global_paths,
    global_table,
    start_extra_evaluations,
    start_sources,
)
from boss_fast.models.gmm import eight_gaussians
from boss_fast.ode import start_state
from boss_fast.search import SearchSettings, optimal_schedules


def wavy(x, t):
    return torch.sin(3.0 * x) * (1.0 + t.view(-1, 1))


class Counted:
    """A velocity that counts the samples (rows) it evaluates."""

    def __init__(self, velocity) -> None:
        self.velocity, self.rows = velocity, 0

    def __call__(self, x, t):
        self.rows += x.shape[0]
        return self.velocity(x, t)


def _noise(m: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(m, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------- the pinned start's bits

# Computed at commit 3a03114 (before the start became a DP variable) by the same call as below:
# global_table(wavy, _noise(20, 3, 11), uniform_grid(14), 5, GlobalPass(batch_size=6)).
PINNED_BEFORE = [
    ([0, 14], 0.5338496735397473),
    ([0, 10, 14], 0.09325065572045489),
    ([0, 7, 11, 14], 0.039908255278234155),
    ([0, 5, 8, 11, 14], 0.02211063938907724),
    ([0, 3, 6, 9, 12, 14], 0.0135022329181237),
]


def test_the_pinned_start_gives_the_schedules_computed_before_the_change_bit_for_bit():
    table = global_table(wavy, _noise(20, 3, 11), bf.uniform_grid(14), 5, GlobalPass(batch_size=6),
                         progress=False)  # fmt: skip
    assert [(p.indices.tolist(), p.cost) for p in global_paths(table)] == PINNED_BEFORE


# ------------------------------------------------------------------------------------ closed-form flows


def test_a_flow_at_rest_then_straight_starts_where_it_turns_straight():
    """v = 0 for t < t*, a constant c from t* on: from the noise at t*, one Euler step is exact (cost 0), from
    any earlier start it misses (1 - t*) c, from a later one (t_s - t*) c: the 1-step "noise" DP starts at t*;
    with more steps any start up to t* followed by a knot at t* is exact too (round-off: 1e-31)."""
    times, star = bf.uniform_grid(20), 7
    c = torch.tensor([2.0, -1.0], dtype=torch.float64)

    def rest_then_straight(x, t):
        return (t >= times[star] - 1e-12).to(x.dtype)[:, None] * c

    run = GlobalPass(batch_size=16, solver="euler", start="noise")
    table = global_table(rest_then_straight, _noise(16, 2, 0), times, 4, run, progress=False)
    paths = global_paths(table)
    assert paths[0].indices.tolist() == [star, 20]
    for path in paths:
        assert path.indices[0] <= star and star in path.indices and path.cost < 1e-28
    pinned = global_table(rest_then_straight, _noise(16, 2, 0), times, 1, GlobalPass(solver="euler"),
                          progress=False)  # fmt: skip
    assert global_paths(pinned)[0].cost == pytest.approx((1 - times[star]) ** 2 * 5.0, rel=1e-12)


@pytest.mark.parametrize(("rule", "best_t"), [("noise", math.exp(-1.0)), ("scaled", 0.5)])
def test_a_linear_flow_one_step_starts_where_the_closed_form_says(rule, best_t):
    """v = -x: the flow ends at e^{-1} x_0. One Euler step from the start state s(t) x_0 at t ends at
    (1 - (1 - t)) s(t) x_0 = t s(t) x_0, error (t s(t) - e^{-1})^2 |x_0|^2: with s = 1 ("noise") zero at
    t = e^{-1}; with s = 1 - t ("scaled") least at t = 0.5 (t (1 - t) <= 1/4 < e^{-1}). The 1-step DP is
    exact: its start is the grid point nearest the closed form (the error is symmetric about it), at its
    cost."""
    times = bf.uniform_grid(40)
    noise = _noise(64, 3, 1)
    table = global_table(lambda x, t: -x, noise, times, 1, GlobalPass(solver="rk4", start=rule),
                         progress=False)  # fmt: skip
    path = global_paths(table)[0]
    nearest = int(np.argmin(np.abs(times - best_t)))
    assert path.indices.tolist() == [nearest, 40]
    t = times[nearest]
    scale = 1.0 if rule == "noise" else 1.0 - t
    closed = (t * scale - math.exp(-1.0)) ** 2 * float(noise.square().sum(1).mean())
    assert path.cost == pytest.approx(closed, rel=1e-6)  # the RK4 teacher's error: about 1e-9 relative


# --------------------------------------------------------------------------------- the recursion, brute force


def brute_force_free_start(velocity, noise, times, max_steps, rule):
    """The module's recursion with level 0 at every grid point j < N - 1 (the rule's start state there), one
    (k, i, j) at a time in float64."""
    teacher = bf.teacher_trajectory(velocity, noise, times, "heun", record="states").states
    n = len(times)
    costs = np.full((max_steps + 1, n), np.inf)
    pointers = np.full((max_steps + 1, n), -1, dtype=np.int64)
    states = {j: start_state(noise, rule, float(times[j])) for j in range(n - 1)}
    for k in range(1, max_steps + 1):
        new = {}
        for j in range(k, n):
            for i, x in states.items():
                if i >= j:
                    continue
                v = velocity(x, torch.full((x.shape[0],), float(times[i]), dtype=x.dtype))
                cand = x + (float(times[j]) - float(times[i])) * v
                err = float((cand - teacher[j]).double().square().sum(dim=1).mean())
                if err < costs[k, j]:
                    costs[k, j], pointers[k, j], new[j] = err, i, cand
        states = {j: x for j, x in new.items() if j < n - 1}
    return costs, pointers


@pytest.mark.parametrize("rule", ["noise", "scaled"])
def test_free_start_recursion_equals_a_brute_force_transcription(rule):
    noise, times = _noise(30, 2, 2), bf.uniform_grid(12)
    table = global_table(eight_gaussians(), noise, times, 4, GlobalPass(batch_size=8, start=rule),
                         progress=False)  # fmt: skip
    costs, pointers = brute_force_free_start(eight_gaussians(), noise, times, 4, rule)
    np.testing.assert_array_equal(table.pointers, pointers)
    np.testing.assert_allclose(table.costs, costs, rtol=1e-11, atol=1e-15)


def _endpoint_error(velocity, noise, sched, target):
    return float((bf.sample(velocity, noise, sched) - target).square().sum(1).mean())


# Measured (Heun teacher, 64 noises, grid 12): the free-start DP's path is the best of all (start, knots)
# grid paths in the cases at 1.0 below (and at K = 1 always: level 1 alone is exact). It keeps one state per
# (k, j), chosen by its error at j, greedy in the past: a start that is best at an inner knot need not be
# best at t = 1, so elsewhere it was worse by 5.7% (eight Gaussians, "noise", K = 2: start 7 of 12), 12.2%
# (wavy, "noise", K = 2) and 4.0% (wavy, K = 3, both rules); the factors are those figures rounded up.
BRUTE = [("eight_gaussians", "noise", 2, 1.058), ("eight_gaussians", "noise", 3, 1.0),
         ("eight_gaussians", "scaled", 2, 1.0), ("eight_gaussians", "scaled", 3, 1.0),
         ("wavy", "noise", 2, 1.122), ("wavy", "noise", 3, 1.040),
         ("wavy", "scaled", 2, 1.0), ("wavy", "scaled", 3, 1.040)]  # fmt: skip


@pytest.mark.parametrize(("flow", "rule", "steps", "factor"), BRUTE)
def test_free_start_dp_against_brute_force_over_start_and_knots(flow, rule, steps, factor):
    velocity = eight_gaussians() if flow == "eight_gaussians" else wavy
    noise = _noise(64, 2 if flow == "eight_gaussians" else 3, 3)
    times = bf.uniform_grid(12)
    n = len(times)
    table = global_table(velocity, noise, times, steps, GlobalPass(start=rule), progress=False)
    target = bf.teacher_trajectory(velocity, noise, times, "heun", record="states").states[-1]

    def sched(indices):
        return bf.Schedule(times=times[indices], indices=indices, cost=0.0, grid=times, start=rule)

    best = min(
        _endpoint_error(velocity, noise, sched(list(path) + [n - 1]), target)
        for path in itertools.combinations(range(n - 1), steps)
    )
    dp = global_paths(table)[-1]
    got = _endpoint_error(velocity, noise, sched(dp.indices), target)
    assert got == pytest.approx(dp.cost, rel=1e-12)
    assert best <= got * (1 + 1e-12) and got <= factor * best * (1 + 1e-12), got / best


def test_free_start_is_independent_of_batch_size():
    noise, times = _noise(23, 3, 4), bf.uniform_grid(14)
    ref = global_table(wavy, noise, times, 5, GlobalPass(batch_size=23, start="scaled"), progress=False)
    for batch in (1, 5):
        run = GlobalPass(batch_size=batch, start="scaled")
        got = global_table(wavy, noise, times, 5, run, progress=False)
        np.testing.assert_array_equal(got.pointers, ref.pointers)
        np.testing.assert_allclose(got.costs, ref.costs, rtol=1e-13)


# ------------------------------------------------------------------------------------ evaluations per noise


@pytest.mark.parametrize(("rule", "cap"), [("zero", None), ("noise", None), ("scaled", None), ("noise", 4)])
def test_counted_evaluations_are_the_closed_form(rule, cap):
    """Rows through a wrapped velocity = Heun teacher 2 (N - 1) + level 1's len(start_sources) + N - k at
    each level k >= 2, per noise; the free start adds start_extra_evaluations (cap, default N - 2)."""
    noise, times, steps = _noise(10, 3, 5), bf.uniform_grid(15), 6
    n = len(times)
    velocity = Counted(wavy)
    global_table(velocity, noise, times, steps, GlobalPass(batch_size=4, start=rule, start_cap=cap),
                 progress=False)  # fmt: skip
    pinned = 2 * (n - 1) + 1 + sum(n - k for k in range(2, steps + 1))
    assert velocity.rows == 10 * (pinned + start_extra_evaluations(rule, n, cap))
    assert start_extra_evaluations(rule, n, cap) == {None: n - 2, 4: 4}[cap] * (rule != "zero")
    assert start_extra_evaluations("noise", 101) / 1056 < 0.1  # 99 more than 1056: 1.094x on a 100-step grid


def test_a_cap_bounds_the_start():
    noise, times = _noise(16, 2, 6), bf.uniform_grid(20)
    free = global_paths(global_table(eight_gaussians(), noise, times, 3, GlobalPass(start="noise"),
                                     progress=False))  # fmt: skip
    assert max(p.indices[0] for p in free) > 3  # the cap below binds
    capped = global_table(eight_gaussians(), noise, times, 3, GlobalPass(start="noise", start_cap=3),
                          progress=False)  # fmt: skip
    assert all(p.indices[0] <= 3 for p in global_paths(capped))


# ------------------------------------------------------------------------------ the search, determinism


@pytest.mark.parametrize("rule", ["noise", "scaled"])
def test_the_search_is_deterministic_for_a_seed_and_its_schedules_carry_the_rule(rule, tmp_path):
    settings = SearchSettings(grid=16, num_samples=12, batch_size=5, start=rule)
    first = optimal_schedules(wavy, (3,), 4, settings, dtype=torch.float64)
    assert first == optimal_schedules(wavy, (3,), 4, settings, dtype=torch.float64)
    assert first != optimal_schedules(
        wavy,
        (3,),
        4,
        SearchSettings(grid=16, num_samples=12, batch_size=5, start=rule, seed=1),
        dtype=torch.float64,
    )
    for sched in first.values():
        assert sched.start == rule and sched.objective == "global"
        end = bf.sample(wavy, bf.seeded_noise((3,), 0, 12, seed=0, dtype=torch.float64), sched)
        teacher = bf.teacher_trajectory(wavy, bf.seeded_noise((3,), 0, 12, seed=0, dtype=torch.float64),
                                        settings.times(), "heun").states[-1]  # fmt: skip
        assert float((end - teacher).square().sum(1).mean()) == pytest.approx(sched.cost, rel=1e-12)
    first.save(tmp_path / "set.json")
    assert bf.ScheduleSet.load(tmp_path / "set.json") == first


# ------------------------------------------------------------------------------- checkpoints and refusals


def test_a_free_start_checkpoint_is_refused_by_a_run_with_another_rule_or_cap(tmp_path):
    """(Resuming after kill -9: tests/test_engine.py, with a free start too.)"""
    noise, times = _noise(11, 3, 7), bf.uniform_grid(12)
    run = GlobalPass(batch_size=4, start="noise")
    want = global_table(wavy, noise, times, 4, run, progress=False)
    path = tmp_path / "own.npz"
    args = {"progress": False, "checkpoint": path, "checkpoint_key": "f"}
    global_table(wavy, noise, times, 4, run, **args)
    got = global_table(wavy, noise, times, 4, run, **args)  # the finished file: returned at once
    np.testing.assert_array_equal(got.pointers, want.pointers)
    with pytest.raises(ValueError, match="different run: start"):
        global_table(wavy, noise, times, 4, GlobalPass(batch_size=4), **args)
    with pytest.raises(ValueError, match="different run: start"):
        global_table(wavy, noise, times, 4, GlobalPass(batch_size=4, start="scaled"), **args)
    with pytest.raises(ValueError, match="different run: start_cap"):
        global_table(wavy, noise, times, 4, GlobalPass(batch_size=4, start="noise", start_cap=5), **args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start": "sigma_max"}, "unknown start 'sigma_max'"),
        ({"start": None}, "unknown start None"),
        ({"start": "zero", "start_cap": 3}, "start 'zero' takes None"),
        ({"start": "noise", "start_cap": -1}, "start_cap must be >= 0"),
        ({"start": "noise", "start_cap": 2.5}, "start_cap"),
    ],
)
def test_bad_start_settings_are_refused_by_name(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        GlobalPass(**kwargs)


def test_start_sources_and_a_cap_beyond_the_grid():
    assert start_sources("zero", 10).tolist() == [0]
    assert start_sources("scaled", 5).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"start_cap must be a grid point below the last, 0 \.\. 8"):
        start_sources("noise", 10, cap=9)
    with pytest.raises(ValueError, match="start_cap must be a grid point below the last"):
        global_table(wavy, _noise(4, 3, 0), bf.uniform_grid(5), 2, GlobalPass(start="noise", start_cap=7),
                     progress=False)  # fmt: skip


# ------------------------------------------------------------------------------------ the local objective


def _brute_local(cost, e0, steps, discount):
    """min over (start j, knots) of e0[j] + sum_m discount^m cost[i_m, i_{m+1}], by enumeration."""
    n = len(e0)
    best = (np.inf, None)
    for path in itertools.combinations(range(n - 1), steps):
        idx = [*path, n - 1]
        total = e0[idx[0]] + sum(discount**m * cost[a, b] for m, (a, b) in enumerate(itertools.pairwise(idx)))
        if total < best[0]:
            best = (total, idx)
    return best


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
        total, indices = _brute_local(cost, e0, path.steps, discount)
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


@pytest.mark.parametrize("metric", ["l2sq", "l2"])
@pytest.mark.parametrize("rule", ["noise", "scaled"])
def test_start_cost_sums_is_the_definition(rule, metric):
    traj = bf.teacher_trajectory(wavy, _noise(7, 3, 8), bf.uniform_grid(10), "euler", record="states")
    sums, count = bf.cost.start_cost_sums(traj.states, traj.times, rule, metric)
    want = []
    for j, t in enumerate(traj.times.tolist()):
        err = (start_state(traj.states[0], rule, t) - traj.states[j]).square().sum(1)
        want.append(float((err.sqrt() if metric == "l2" else err).sum()))
    assert count == 7 and sums[0] == 0.0
    np.testing.assert_allclose(sums, want, rtol=1e-13)


def test_a_linear_path_costs_nothing_to_start_scaled_anywhere():
    """x_t = (1 - t) x_0 + t c: "scaled" misses t c at t, "noise" t x_0 - t c (closed forms)."""
    times, noise = bf.uniform_grid(8), _noise(5, 2, 9)
    c = torch.tensor([1.0, -2.0], dtype=torch.float64)
    states = torch.stack([(1 - t) * noise + t * c for t in times.tolist()])
    scaled, _ = bf.cost.start_cost_sums(states, times, "scaled")
    np.testing.assert_allclose(scaled, 5 * 5.0 * times**2, rtol=1e-12)
    plain, _ = bf.cost.start_cost_sums(states, times, "noise")
    want = [float((t * noise - t * c).square().sum()) for t in times.tolist()]
    np.testing.assert_allclose(plain, want, rtol=1e-12)


@pytest.mark.parametrize("rule", ["noise", "scaled"])
def test_a_local_free_start_search_is_the_brute_force_best_and_its_set_keeps_the_start_costs(rule, tmp_path):
    settings = SearchSettings(grid=10, num_samples=16, batch_size=5, objective="local", start=rule)
    found = optimal_schedules(wavy, (3,), 3, settings, dtype=torch.float64)
    assert found == optimal_schedules(wavy, (3,), 3, settings, dtype=torch.float64)  # deterministic
    noise = bf.seeded_noise((3,), 0, 16, seed=0, dtype=torch.float64)
    traj = bf.teacher_trajectory(wavy, noise, settings.times(), "euler")
    cost = bf.cost.trajectory_cost(traj.states, traj.velocities, traj.times)
    e0 = bf.cost.start_cost_sums(traj.states, traj.times, rule)[0] / 16
    e0[-1] = np.inf
    np.testing.assert_allclose(found.start_costs, e0, rtol=1e-12)
    for k, sched in found.items():
        total, indices = _brute_local(cost, e0, k, 1.0)
        assert sched.indices.tolist() == indices and sched.cost == pytest.approx(total, rel=1e-9)
        assert sched.start == rule
    assert found.resample(5) == schedules_from(found, 5)
    found.save(tmp_path / "set.json")
    assert bf.ScheduleSet.load(tmp_path / "set.json") == found


def schedules_from(found, k):
    """A fresh DP on the set's own table and start costs, read at k."""
    first = found[1]
    described = {"metric": first.metric, "solver": first.solver, "num_samples": first.num_samples}
    return bf.schedules_from_cost(found.cost_table, k, grid=found.grid, shape=first.shape, start=first.start,
                                  start_costs=found.start_costs, **described)[k]  # fmt: skip


def test_a_local_set_without_its_start_costs_or_with_edited_ones_is_refused(tmp_path):
    settings = SearchSettings(grid=10, num_samples=8, objective="local", start="noise")
    found = optimal_schedules(wavy, (3,), 3, settings, dtype=torch.float64)
    with pytest.raises(ValueError, match="start_costs come with the cost table"):
        bf.ScheduleSet(found.values(), cost_table=found.cost_table)
    with pytest.raises(ValueError, match="start_costs come with the cost table"):
        bf.ScheduleSet(found.values(), start_costs=found.start_costs)
    with pytest.raises(ValueError, match="finite from grid point 0 to a cap"):
        bf.ScheduleSet(found.values(), found.cost_table, np.append(found.start_costs[:-1], 0.5))
    doc = found.to_dict()
    doc["start_costs"][found[1].indices[0]] += 10.0  # the 1-step start now costs more than another
    doc["sha256"] = bf._identity.content_digest(doc)
    (tmp_path / "edited.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="not the Bellman DP's answer"):
        bf.ScheduleSet.load(tmp_path / "edited.json")
    pinned = optimal_schedules(wavy, (3,), 3, SearchSettings(grid=10, num_samples=8, objective="local"),
                               dtype=torch.float64)  # fmt: skip
    assert pinned.start_costs is None and "start_costs" not in pinned.to_dict()


def test_a_local_checkpoint_of_a_free_start_is_refused_by_a_pinned_run(tmp_path):
    path = tmp_path / "cost.npz"
    settings = SearchSettings(grid=10, num_samples=9, batch_size=4, objective="local", start="scaled")
    optimal_schedules(wavy, (3,), 3, settings, dtype=torch.float64, checkpoint=path, checkpoint_key="w")
    pinned = SearchSettings(grid=10, num_samples=9, batch_size=4, objective="local")
    with pytest.raises(ValueError, match="different run: start"):
        optimal_schedules(wavy, (3,), 3, pinned, dtype=torch.float64, checkpoint=path, checkpoint_key="w")


# ----------------------------------------------------------------------------------------------- the oracle


def test_the_oracle_moves_a_free_start_to_the_closed_form_and_keeps_a_pinned_one():
    """v = -x, one step: the endpoint error from the noise at t is (t - e^{-1})^2 |x_0|^2 (see above); the
    oracle, moving only the start, lands on the grid point nearest e^{-1}; pinned, it cannot move at K = 1."""
    times, noise = bf.uniform_grid(40), _noise(32, 3, 12)
    reference = math.exp(-1.0) * noise
    got = bf.oracle.coordinate_descent(lambda x, t: -x, noise, reference, times, 1, start="noise")
    assert got.indices.tolist() == [int(np.argmin(np.abs(times - math.exp(-1.0)))), 40]
    pinned = bf.oracle.coordinate_descent(lambda x, t: -x, noise, reference, times, 1)
    assert pinned.indices.tolist() == [0, 40] and pinned.sweeps == 1


@pytest.mark.parametrize("rule", ["noise", "scaled"])
def test_the_oracle_from_the_free_start_dp_ends_no_higher_and_is_deterministic(rule):
    noise, times = _noise(48, 2, 13), bf.uniform_grid(20)
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
