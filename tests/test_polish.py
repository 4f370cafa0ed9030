"""boss_fast.polish: knot moves on the endpoint error, in the search and on their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from _helpers import CountedRows

from boss_fast.engine import Shard, WideEvaluator
from boss_fast.global_objective import GlobalPass, accumulate_global, global_paths, start_sources
from boss_fast.grids import uniform_grid
from boss_fast.oracle import endpoint_error
from boss_fast.polish import (
    WHOLE_UP_TO,
    EndpointProbe,
    _ladder,
    polish,
    polish_bound,
    polish_paths,
    polish_samples,
)
from boss_fast.search import SearchSettings, optimal_schedules
from boss_fast.trajectories import seeded_noise


def cubic_flow(x, t):
    """x(1) = x(0) + 1 exactly; one Euler step from t_s (the noise as its state) adds 3 t_s^2 (1 - t_s)."""
    return 3.0 * t.view(-1, *([1] * (x.ndim - 1))) ** 2 * torch.ones_like(x)


def wavy(x, t):
    return torch.sin(3.0 * x) * (1.0 + t.view(-1, *([1] * (x.ndim - 1)))) - 0.5 * x


def _probe(velocity, noise, reference, rule="noise", batch_size=4, metric="l2sq"):
    shard = Shard(noise.shape[0], batch_size)
    make = lambda a, b: noise[a:b]  # noqa: E731
    ends = [reference[slice(*shard.span(b))] for b in shard.mine]
    return EndpointProbe(
        velocity, make, shard, ends, rule, metric, WideEvaluator(velocity, batch_size), noise.device
    )


def _dp(velocity, noise, grid, steps, rule="noise", batch_size=4):
    run = GlobalPass(batch_size=batch_size, solver="rk4", start=rule)
    make = lambda a, b: noise[a:b]  # noqa: E731
    table = accumulate_global(velocity, make, noise.shape[0], grid, steps, run, device=None, progress=False,
                              checkpoint=None, identity={}, keep_endpoints=True)  # fmt: skip
    return table, run


def test_the_start_moves_to_the_closed_form_best_one_step_start():
    # error(s) = (1 - 3 s^2 (1 - s))^2 is unimodal with its minimum at s = 2/3: from each start a ladder of
    # halving rungs ends at the grid point a brute force ranks best.
    grid = uniform_grid(30)
    noise = torch.zeros(5, 2, dtype=torch.float64)
    probe = _probe(cubic_flow, noise, noise + 1.0)
    brute = min(range(30), key=lambda s: (1 - 3 * grid[s] ** 2 * (1 - grid[s])) ** 2)
    for start in (0, 5, 29):
        r = polish(probe, grid, np.array([start, 30]), "start", start_cap=29, ladder=(16, 8, 4, 2, 1))
        assert r.indices.tolist() == [brute, 30]
        assert r.error == pytest.approx(2 * (1 - 3 * grid[brute] ** 2 * (1 - grid[brute])) ** 2, rel=1e-12)


class Recording:
    """An EndpointProbe that records the error of every probe it makes."""

    def __init__(self, probe):
        self.inner, self.seen = probe, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def probe(self, times, from_state=False):
        err = self.inner.probe(times, from_state)
        self.seen.append(err)
        return err


def test_a_polished_schedule_is_the_best_it_probed_never_worse_and_its_error_is_the_samplers():
    grid = uniform_grid(14)
    noise = seeded_noise((3,), 0, 10, dtype=torch.float64)
    table, run = _dp(wavy, noise, grid, 3)
    ref = torch.cat(table.endpoints)
    for path in global_paths(table):
        for knots in ("start", "all"):
            probe = Recording(_probe(wavy, noise, ref))
            r = polish(probe, grid, path.indices, knots, start_cap=12, ladder=(4, 2, 1))
            assert r.error <= path.cost * (1 + 1e-12)
            assert r.error == min(probe.seen)  # a move is kept only when it lowers the error
            assert r.error == pytest.approx(
                endpoint_error(wavy, noise, ref, grid[r.indices], "noise"), rel=1e-12
            )


def test_the_ladder_probes_each_rung_both_ways_and_moves_to_the_best_of_three():
    # error(p) = (p - 9)^2 from 3 with rungs (4, 2, 1): 3 -> 7 (probes -1 skipped, 7), 7 -> 9 (5, 9),
    # 9 stays (8, 10): 5 probes, one skipped below the range.
    seen = []

    def probe(p):
        seen.append(p)
        return float((p - 9) ** 2)

    at, best, moves = _ladder(probe, 3, 0, 20, 36.0, (4, 2, 1))
    assert (at, best, moves) == (9, 0.0, 2)
    assert seen == [7, 5, 9, 8, 10]
    with pytest.raises(ValueError, match="ladder must have at least one rung"):
        polish_bound(3, "start", pinned=False, ladder=())
    with pytest.raises(ValueError, match="ladder rung"):
        polish_bound(3, "start", pinned=False, ladder=(2, 0))


def test_the_start_polish_spends_its_bound_when_no_probe_falls_outside():
    grid = uniform_grid(40)
    noise = seeded_noise((3,), 0, 6, dtype=torch.float64)
    counted = CountedRows(wavy)
    probe = _probe(counted, noise, torch.cat(_dp(wavy, noise, grid, 1)[0].endpoints))
    for k, idx in ((1, [20, 40]), (3, [12, 25, 33, 40])):  # the start 12-20: every probe within 0 .. 39
        r = polish(probe, grid, np.array(idx), "start", start_cap=39, ladder=(4, 2, 1))
        assert r.evaluations == polish_bound(k, "start", pinned=False, ladder=(4, 2, 1)) == 7 * k


@pytest.mark.parametrize("knots", ["start", "all"])
def test_evaluations_are_counted_exactly_and_within_the_bound(knots):
    grid = uniform_grid(20)
    noise = seeded_noise((3,), 0, 7, dtype=torch.float64)
    table, _ = _dp(wavy, noise, grid, 4, batch_size=3)
    counted = CountedRows(wavy)
    probe = _probe(counted, noise, torch.cat(table.endpoints), batch_size=3)
    for path in global_paths(table):
        before = counted.rows
        r = polish(probe, grid, path.indices, knots, start_cap=18)
        assert counted.rows - before == r.evaluations * 7
        assert r.evaluations <= polish_bound(len(path.indices) - 1, knots, pinned=False)


def test_the_batching_does_not_change_the_moves():
    grid = uniform_grid(16)
    noise = seeded_noise((3,), 0, 11, dtype=torch.float64)
    table, _ = _dp(wavy, noise, grid, 3)
    ref = torch.cat(table.endpoints)
    for path in global_paths(table):
        a = polish(_probe(wavy, noise, ref, batch_size=11), grid, path.indices, "all", start_cap=14)
        b = polish(_probe(wavy, noise, ref, batch_size=2), grid, path.indices, "all", start_cap=14)
        assert a.indices.tolist() == b.indices.tolist() and a.error == pytest.approx(b.error, rel=1e-12)


def test_a_pinned_start_stays_at_zero_under_all():
    grid = uniform_grid(14)
    noise = seeded_noise((3,), 0, 6, dtype=torch.float64)
    table, _ = _dp(wavy, noise, grid, 3, rule="zero")
    probe = _probe(wavy, noise, torch.cat(table.endpoints), rule="zero")
    for path in global_paths(table):
        assert polish(probe, grid, path.indices, "all", start_cap=-1).indices[0] == 0
    assert polish_bound(3, "start", pinned=True) == 0


def test_the_search_default_polishes_a_free_start_and_returns_the_polished_errors():
    settings = SearchSettings(grid=16, num_samples=12, batch_size=5, solver="rk4", dp="full")
    assert settings.polish_knots == "start"
    assert replace(settings, start="zero").polish_knots == "none"
    assert replace(settings, objective="local").polish_knots == "none"
    polished = optimal_schedules(wavy, (3,), 4, settings, dtype=torch.float64)
    plain = optimal_schedules(wavy, (3,), 4, replace(settings, polish="none"), dtype=torch.float64)
    noise = seeded_noise((3,), 0, 12, dtype=torch.float64)
    table, _ = _dp(wavy, noise, uniform_grid(16), 4, batch_size=5)
    ref = torch.cat(table.endpoints)
    for k in range(1, 5):
        assert polished[k].cost <= plain[k].cost * (1 + 1e-12)
        assert polished[k].cost == pytest.approx(
            endpoint_error(wavy, noise, ref, polished[k].times), rel=1e-12
        )
        np.testing.assert_array_equal(polished[k].indices[1:], plain[k].indices[1:])  # "start": knot 0 only


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"polish": "knots"}, "unknown polish 'knots'; expected one of 'none', 'start', 'all'"),
        (
            {"polish": "start", "start": "zero"},
            "polish='start' moves the start knot, and start 'zero' pins it",
        ),
        ({"polish": "all", "objective": "local"}, "objective='local' takes polish 'none'"),
    ],
)
def test_bad_polish_settings_are_refused_by_name(fields, match):
    with pytest.raises(ValueError, match=match):
        SearchSettings(**fields)


class Dying:
    def __init__(self, fn, die_at_row):
        self.fn, self.die_at_row, self.rows = fn, die_at_row, 0

    def __call__(self, x, t):
        if self.die_at_row is not None and self.rows >= self.die_at_row:
            raise RuntimeError("simulated kill")
        self.rows += x.shape[0]
        return self.fn(x, t)


KILL_SETTINGS = SearchSettings(grid=16, num_samples=9, batch_size=4, solver="rk4")


def _uninterrupted_and_dp_rows() -> tuple[dict, int]:
    """The default route's schedules run through, and the model rows its DP alone takes (the polish off):
    a kill after those rows plus 9 x 12 lands inside the polish of a later budget."""
    whole = optimal_schedules(wavy, (3,), 4, KILL_SETTINGS, dtype=torch.float64)
    dp_only = CountedRows(wavy)
    optimal_schedules(dp_only, (3,), 4, replace(KILL_SETTINGS, polish="none"), dtype=torch.float64)
    return whole, dp_only.rows


def test_a_search_killed_while_polishing_resumes_to_the_same_bits(tmp_path):
    settings = KILL_SETTINGS
    whole, dp_rows = _uninterrupted_and_dp_rows()
    ckpt = tmp_path / "s.npz"
    dying = Dying(wavy, dp_rows + 9 * 12)  # past the DP, inside the polish of a later budget
    with pytest.raises(RuntimeError, match="simulated kill"):
        optimal_schedules(dying, (3,), 4, settings, dtype=torch.float64, checkpoint=ckpt, checkpoint_key="w")
    with np.load(tmp_path / "s.polish.npz") as stored:
        assert 1 <= int(stored["budgets_done"]) < 4
    again = Dying(wavy, None)
    resumed = optimal_schedules(
        again, (3,), 4, settings, dtype=torch.float64, checkpoint=ckpt, checkpoint_key="w"
    )
    assert again.rows < dp_rows  # neither the teacher nor the DP ran again
    for k in range(1, 5):
        np.testing.assert_array_equal(resumed[k].indices, whole[k].indices)
        assert resumed[k].cost == whole[k].cost


def test_a_finished_dp_checkpoint_without_endpoints_reruns_the_teacher_only(tmp_path):
    settings = SearchSettings(grid=16, num_samples=9, batch_size=4, solver="rk4", dp="full")
    ckpt = tmp_path / "s.npz"
    optimal_schedules(wavy, (3,), 3, replace(settings, polish="none"), dtype=torch.float64, checkpoint=ckpt,
                      checkpoint_key="w")  # fmt: skip
    with np.load(ckpt) as stored:
        assert "endpoints" not in stored.files
    counted = CountedRows(wavy)
    resumed = optimal_schedules(
        counted, (3,), 3, settings, dtype=torch.float64, checkpoint=ckpt, checkpoint_key="w"
    )
    fresh_count = CountedRows(wavy)
    fresh = optimal_schedules(fresh_count, (3,), 3, settings, dtype=torch.float64)
    # everything but the DP's levels (17 grid points: 16 start sources, then 15 and 14 per noise) ran again
    assert counted.rows == fresh_count.rows - 9 * (16 + 15 + 14)
    for k in range(1, 4):
        np.testing.assert_array_equal(resumed[k].indices, fresh[k].indices)
        assert resumed[k].cost == fresh[k].cost


def test_a_scaled_start_is_polished_from_the_scaled_state():
    """ComfyUI's rule: the polish probes from (1 - t_s) x noise, so a schedule's error is the sampler's."""
    settings = SearchSettings(grid=16, num_samples=10, batch_size=4, solver="rk4", dp="full", start="scaled")
    found = optimal_schedules(wavy, (3,), 3, settings, dtype=torch.float64)
    noise = seeded_noise((3,), 0, 10, dtype=torch.float64)
    table, _ = _dp(wavy, noise, uniform_grid(16), 3, rule="scaled")
    ref = torch.cat(table.endpoints)
    for k in range(1, 4):
        assert found[k].start == "scaled"
        err = endpoint_error(wavy, noise, ref, found[k].times, "scaled")
        assert found[k].cost == pytest.approx(err, rel=1e-12)
        if found[k].times[0] > 0:  # there the two rules' start states differ
            assert err != endpoint_error(wavy, noise, ref, found[k].times, "noise")
    assert any(found[k].times[0] > 0 for k in range(1, 4))


_KILLED = """
import os, signal, sys
import torch
from boss_fast.search import SearchSettings, optimal_schedules

calls = {"rows": 0}

def velocity(x, t):
    calls["rows"] += x.shape[0]
    if calls["rows"] > int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    return torch.sin(3.0 * x) * (1.0 + t.view(-1, *([1] * (x.ndim - 1)))) - 0.5 * x

settings = SearchSettings(grid=16, num_samples=9, batch_size=4, solver="rk4")
optimal_schedules(velocity, (3,), 4, settings, dtype=torch.float64, checkpoint=sys.argv[1],
                  checkpoint_key="w")
"""


def test_sigkill_while_polishing_the_default_search_resumes_to_the_same_bits(tmp_path):
    """The default route (coarse DP, start polish) killed with SIGKILL inside the polish of a later budget."""
    settings = KILL_SETTINGS  # the _KILLED script's own
    whole, dp_rows = _uninterrupted_and_dp_rows()
    ckpt = tmp_path / "s.npz"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    kill_after = dp_rows + 9 * 12  # past the DP: budgets 1 and 2 polished (at least K + 2 K probes)
    proc = subprocess.run([sys.executable, "-c", _KILLED, str(ckpt), str(kill_after)], env=env)
    assert proc.returncode == -signal.SIGKILL
    with np.load(tmp_path / "s.polish.npz") as stored:
        assert 1 <= int(stored["budgets_done"]) < 4
    again = CountedRows(wavy)
    resumed = optimal_schedules(
        again, (3,), 4, settings, dtype=torch.float64, checkpoint=ckpt, checkpoint_key="w"
    )
    assert again.rows < dp_rows  # neither pass of the DP ran again
    for k in range(1, 5):
        np.testing.assert_array_equal(resumed[k].indices, whole[k].indices)
        assert resumed[k].cost == whole[k].cost


def test_a_table_without_endpoints_is_refused_by_name():
    grid = uniform_grid(10)
    noise = seeded_noise((3,), 0, 4, dtype=torch.float64)
    run = GlobalPass(batch_size=4, solver="rk4", start="noise")
    table = accumulate_global(wavy, lambda a, b: noise[a:b], 4, grid, 2, run, device=None, progress=False,
                              checkpoint=None, identity={})  # fmt: skip
    with pytest.raises(
        ValueError, match="needs the teacher's endpoints: run the DP with keep_endpoints=True"
    ):
        polish_paths(wavy, lambda a, b: noise[a:b], table, run, "start", device=torch.device("cpu"),
                     progress=False, checkpoint=None, identity={})  # fmt: skip


def test_the_polish_probes_half_the_noises_and_keeps_a_move_only_where_all_of_them_agree(monkeypatch):
    monkeypatch.setattr("boss_fast.polish.MIN_PROBED", 1)  # half of 10 noises (the floor is 128)
    grid = uniform_grid(16)
    noise = seeded_noise((3,), 0, 10, seed=4, dtype=torch.float64) * 2  # seed 4: one move kept, one refused
    table, run = _dp(wavy, noise, grid, 5)
    ref = torch.cat(table.endpoints)
    counted = CountedRows(wavy)
    out = polish_paths(counted, lambda a, b: noise[a:b], table, run, "start", device=torch.device("cpu"),
                       progress=False, checkpoint=None, identity={})  # fmt: skip
    assert polish_samples(10) == 5
    cap = int(start_sources("noise", len(grid), None)[-1])
    kept = refused = 0
    for (path, spent), dp in zip(out, global_paths(table), strict=True):
        steps = len(dp.indices) - 1
        assert path.cost <= dp.cost
        if steps <= WHOLE_UP_TO:  # probed on all the noises
            r = polish(_probe(wavy, noise, ref), grid, dp.indices, "start", start_cap=cap)
            assert path.indices.tolist() == r.indices.tolist() and spent == r.evaluations * 10
            assert path.cost == r.error
            continue
        half = polish(_probe(wavy, noise[:5], ref[:5]), grid, dp.indices, "start", start_cap=cap)
        if not half.moves:
            assert path.indices.tolist() == dp.indices.tolist() and spent == half.evaluations * 5
            continue
        assert spent == half.evaluations * 5 + steps * 5  # the probes on 5 noises, the check on the other 5
        whole = endpoint_error(wavy, noise, ref, grid[half.indices], "noise")
        if whole < dp.cost:
            kept += 1
            assert path.indices.tolist() == half.indices.tolist()
            assert path.cost == pytest.approx(whole, rel=1e-12)
        else:
            refused += 1
            assert path.indices.tolist() == dp.indices.tolist() and path.cost == dp.cost
    assert kept and refused
    assert counted.rows == sum(spent for _, spent in out)


def test_the_probed_noises_are_half_but_at_least_the_floor_or_all():
    sizes = (1, 100, 128, 200, 256, 257, 1000)
    assert [polish_samples(m) for m in sizes] == [1, 100, 128, 128, 128, 129, 500]
