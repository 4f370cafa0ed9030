"""Schedule: construction checks, JSON round trip and refusal of bad files, DP wiring, and the pipeline."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch

import boss_fast as bf
from boss_fast import schedule as schedule_module
from boss_fast._identity import content_digest, model_fingerprint
from boss_fast.bellman import bellman_path
from boss_fast.grids import uniform_grid
from boss_fast.schedule import (
    Schedule,
    ScheduleSet,
    interpolate_schedule,
    loglinear_times,
    max_budget,
    read_schedule_file,
    schedule_for_steps,
    schedules_from_cost,
    snap_to_grid,
)
from boss_fast.search import SearchSettings, cost_matrix, optimal_schedules
from boss_fast.trajectories import seeded_noise


def quadratic_cost(times):
    """cost[i, j] = (t_j - t_i)^2: convex in the step, so equal steps are optimal whenever they fit."""
    return np.triu(np.square(np.subtract.outer(times, times)), 1)


def make_schedule(**overrides):
    grid = uniform_grid(8)
    fields = {
        "times": grid[[0, 2, 5, 8]],
        "indices": np.array([0, 2, 5, 8]),
        "cost": 0.125,
        "grid": grid,
        "metric": "l2sq",
        "solver": "heun",
        "num_samples": 64,
        "fingerprint": "abc123",
    }
    fields.update(overrides)
    return Schedule(**fields)


def test_schedule_fields_and_sigmas():
    sched = make_schedule()
    assert sched.steps == 3
    assert sched.times.dtype == np.float64 and sched.indices.dtype == np.int64
    np.testing.assert_array_equal(sched.sigmas(), 1.0 - sched.times)
    assert sched.sigmas().dtype == np.float64
    with pytest.raises(ValueError):  # frozen arrays
        sched.times[0] = 0.5
    with pytest.raises(AttributeError):  # frozen dataclass
        sched.cost = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"times": np.array([0.0, 0.625, 0.25, 1.0])}, "strictly increasing"),
        ({"indices": np.array([0, 2, 4, 8])}, r"times\[2\] = 0.625 but grid\[indices\[2\]\] = 0.5"),
        ({"indices": np.array([0, 2, 5, 7])}, "indices must run from a grid point to len"),
        ({"indices": np.array([0, 2, 5])}, "indices has 3 entries"),
        ({"indices": np.array([0.0, 2.0, 5.0, 8.0])}, "integer array"),
        ({"metric": "lpips"}, "unknown metric"),
        ({"solver": "ddim"}, "unknown solver"),
        ({"cost": float("nan")}, "cost must be finite"),
        ({"num_samples": 0}, "num_samples must be >= 1"),
        ({"discount": 0.0}, "discount must be > 0"),
        ({"times": np.array([0.0, 0.25, 0.625, 1.5])}, r"\[0, 1\]"),
    ],
)
def test_inconsistent_schedules_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        make_schedule(**overrides)


def test_save_load_round_trip_is_exact(tmp_path):
    grid = np.sort(np.random.default_rng(0).uniform(0, 1, 30))  # floats that need all 17 digits
    grid[0], grid[-1] = 0.0, 1.0
    sched = Schedule(times=grid[[0, 7, 29]], indices=[0, 7, 29], cost=1 / 3, grid=grid, num_samples=5)
    path = tmp_path / "sched.json"
    sched.save(path)
    assert os.listdir(tmp_path) == ["sched.json"]  # the temporary was renamed over
    doc = json.loads(path.read_text())
    assert doc["format"] == "boss_fast.schedule" and doc["version"] == 1 and doc["steps"] == 2
    loaded = Schedule.load(path)
    assert loaded == sched and loaded is not sched
    np.testing.assert_array_equal(loaded.times, sched.times)
    assert loaded.fingerprint is None and loaded.num_samples == 5


def write_doc(path, mutate):
    doc = make_schedule().to_dict()
    mutate(doc)
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(format="other.tool"), "not a boss_fast schedule"),
        (lambda d: d.pop("format"), "not a boss_fast schedule"),
        (lambda d: d.update(version=3), "unsupported schedule version 3"),
        (lambda d: d.pop("grid"), "missing key.*grid"),
        (lambda d: d.update(times="0, 0.5, 1"), "times must be a non-empty list of numbers"),
        (lambda d: d.update(indices=[0.0, 2.0, 5.0, 8.0]), "indices must be a non-empty list of integers"),
        (lambda d: d.update(cost=True), "cost has the wrong type"),
        (lambda d: d.update(metric=3), "metric has the wrong type"),
        (lambda d: d.update(num_samples=1.5), "num_samples has the wrong type"),
        (lambda d: d.update(steps=4), "steps = 4 but times holds 4 points"),
        (lambda d: d.update(times=[0.0, 0.625, 0.25, 1.0]), "strictly increasing"),
        (lambda d: d.update(indices=[0, 3, 5, 8]), "inconsistent schedule: times.* but grid"),
        (lambda d: d.update(grid=[0.0, 1.0]), "inconsistent schedule"),
        # Numbers too large to convert (an OverflowError before), each refused by its field's name.
        (lambda d: d.update(indices=[0, 2, 5, 10**30]), "indices holds a number too large"),
        (lambda d: d.update(times=[0, 10**400, 1]), "times holds a number too large"),
        (lambda d: d.update(cost=10**400), "cost is too large"),
        (lambda d: d.update(discount=10**400), "discount is too large"),
        (lambda d: d.update(num_samples=10**30), r"num_samples must be an integer in \[1, 2\^53\]"),
        (lambda d: d.update(num_samples=0), r"num_samples must be an integer in \[1, 2\^53\]"),
        (lambda d: d.update(num_samples=-5), r"num_samples must be an integer"),
        (lambda d: d.update(shape="1,8,8"), "shape has the wrong type"),
        (lambda d: d.update(shape=[1, 0, 8]), "shape: shape entry must be >= 1"),
        (lambda d: d.update(shape=[1, 2.5]), "shape: shape entry must be an integer"),
        (lambda d: d.update(shape=[]), "shape: shape must have 1 to 16 entries"),
        (lambda d: d.update(shape=[1, 10**30]), "shape: shape must have 1 to 16 entries"),
    ],
)
def test_load_refuses_foreign_or_inconsistent_json(tmp_path, mutate, match):
    with pytest.raises(ValueError, match=match):
        Schedule.load(write_doc(tmp_path / "bad.json", mutate))


def test_shape_round_trips_and_old_files_without_it_still_load(tmp_path):
    sched = make_schedule(shape=(1, 8, 8))
    assert sched.shape == (1, 8, 8) and make_schedule().shape is None
    sched.save(tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text())["shape"] == [1, 8, 8]
    assert Schedule.load(tmp_path / "s.json") == sched
    assert Schedule.load(tmp_path / "s.json") != make_schedule(shape=(64,))
    old = write_doc(tmp_path / "old.json", lambda d: d.pop("shape"))  # written before shape existed
    assert Schedule.load(old).shape is None


def test_mu_round_trips_in_schedules_and_sets_and_is_written_only_when_set(tmp_path):
    sched = make_schedule(mu=0.75)
    sched.save(tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text())["mu"] == 0.75
    assert Schedule.load(tmp_path / "s.json") == sched and sched != make_schedule()
    make_schedule().save(tmp_path / "plain.json")
    assert "mu" not in json.loads((tmp_path / "plain.json").read_text())  # files without mu stay as they were
    grid = np.linspace(0.0, 1.0, 6)
    cost = np.triu(np.square(np.subtract.outer(grid, grid)), 1)
    plain = schedules_from_cost(cost, 3, grid=grid)
    sset = ScheduleSet([s.__class__(**{**vars(s), "mu": 1.25}) for s in plain.values()], cost_table=cost)
    sset.save(tmp_path / "set.json")
    again = ScheduleSet.load(tmp_path / "set.json")
    assert again == sset and again[2].mu == 1.25 and again.resample(4).mu == 1.25
    plain.save(tmp_path / "plain_set.json")
    assert "mu" not in json.loads((tmp_path / "plain_set.json").read_text())
    with pytest.raises(ValueError, match="budget 2 has mu"):
        ScheduleSet([plain[1], make_like(plain[2])])


def make_like(sched: Schedule) -> Schedule:
    return Schedule(**{**vars(sched), "mu": 0.5})


def test_load_refuses_deep_huge_and_directory_paths(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)  # a RecursionError inside json before
    with pytest.raises(ValueError, match="deep.json: JSON nested too deeply"):
        Schedule.load(deep)
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:  # sparse: 65 MiB on paper, refused from its size before any read
        f.truncate(65 * 2**20)
    with pytest.raises(ValueError, match=r"huge.json: \d+ bytes, larger than any schedule \(64 MiB"):
        Schedule.load(huge)
    long_int = tmp_path / "digits.json"
    long_int.write_text('{"format": "boss_fast.schedule", "version": 1, "cost": ' + "9" * 5000 + "}")
    with pytest.raises(ValueError, match="digits.json: not valid JSON"):
        Schedule.load(long_int)
    with pytest.raises(IsADirectoryError):
        Schedule.load(tmp_path)


def test_load_refuses_truncated_corrupted_and_non_object_files(tmp_path):
    good = tmp_path / "good.json"
    make_schedule().save(good)
    text = good.read_text()
    cases = {
        "truncated.json": text[: len(text) // 2].encode(),
        "empty.json": b"",
        "binary.json": b"\x89PNG\r\n\x1a\n\x00\xff",
        "nan.json": text.replace('"cost": 0.125', '"cost": NaN').encode(),
        "list.json": b"[1, 2, 3]",
    }
    matches = {
        "truncated.json": "not valid JSON",
        "empty.json": "not valid JSON",
        "binary.json": "not valid JSON",
        "nan.json": "non-finite number NaN",
        "list.json": "expected a JSON object",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=matches[name]):
            Schedule.load(tmp_path / name)


def test_schedules_from_cost_solves_a_hand_checkable_matrix():
    grid = uniform_grid(4)
    sset = schedules_from_cost(quadratic_cost(grid), 2, grid=grid, metric="l2", solver="rk4", num_samples=7)
    sched = sset[2]
    np.testing.assert_array_equal(sched.times, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(sched.indices, [0, 2, 4])
    assert sched.cost == pytest.approx(0.5)
    assert (sched.metric, sched.solver, sched.num_samples) == ("l2", "rk4", 7)
    np.testing.assert_array_equal(sched.grid, grid)
    assert isinstance(sset, ScheduleSet) and sset.cost_table is not None and sset.objective == "local"


def test_schedules_from_cost_gives_every_budget_as_the_single_budget_dp():
    grid = uniform_grid(12)
    cost = quadratic_cost(grid) * (1.0 + grid)[None, :]  # later steps cost more: smaller steps there
    every = schedules_from_cost(cost, 12, grid=grid)
    assert list(every) == list(range(1, 13))
    for k in (1, 3, 6, 12):
        one = bellman_path(cost, k)  # the DP of that budget alone
        np.testing.assert_array_equal(every[k].indices, one.indices)
        assert every[k].cost == one.cost  # the same float64 sums in the same order
        assert every[k] == schedules_from_cost(cost, k, grid=grid)[k]  # a budget does not depend on max_steps
    np.testing.assert_array_equal(every[12].times, grid)


@pytest.mark.parametrize(
    ("steps", "error", "match"),
    [
        (5, ValueError, r"max_steps must be < len\(grid\) = 5"),
        (0, ValueError, "max_steps must be >= 1"),
        (2.0, TypeError, "max_steps must be an integer"),
    ],
)
def test_schedules_from_cost_bad_steps(steps, error, match):
    grid = uniform_grid(4)
    with pytest.raises(error, match=match):
        schedules_from_cost(quadratic_cost(grid), steps, grid=grid)


def test_schedules_from_cost_shape_mismatch_and_grid_named():
    with pytest.raises(ValueError, match=r"cost must have shape \(5, 5\)"):
        schedules_from_cost(np.zeros((4, 4)), 2, grid=uniform_grid(4))
    with pytest.raises(ValueError, match="grid must be strictly increasing"):
        schedules_from_cost(np.zeros((3, 3)), 1, grid=[0.0, 1.0, 0.5])
    with pytest.raises(TypeError, match="grid"):
        schedules_from_cost(np.zeros((5, 5)), 2)  # the grid is keyword-only and required


# ---------------------------------------------------------------------------------------------- pipeline


class GrowingFlow(torch.nn.Module):
    """v = a x, a scalar parameter: Euler-jump errors grow like exp(2 a t), so steps shrink toward t = 1."""

    def __init__(self, a: float = 3.0):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a))

    def forward(self, x, t):
        return self.a * x


def test_optimal_schedule_end_to_end_matches_cost_matrix_and_dp():
    model = GrowingFlow()
    sched = optimal_schedules(
        model, (3,), 4, SearchSettings(grid=24, num_samples=10, batch_size=4, seed=3, objective="local")
    )[4]
    grid = uniform_grid(24)
    noise = seeded_noise((3,), 0, 10, seed=3)
    expected = schedules_from_cost(cost_matrix(model, noise, grid, progress=False), 4, grid=grid)[4]
    np.testing.assert_array_equal(sched.indices, expected.indices)
    assert sched.cost == pytest.approx(expected.cost, rel=1e-12)
    steps = np.diff(sched.times)  # steps shrink where the error grows (on the grid's resolution)
    assert np.all(np.diff(steps) < 1e-12) and steps[0] > 2 * steps[-1]
    assert sched.fingerprint == model_fingerprint(model)
    assert (sched.num_samples, sched.solver, sched.metric) == (10, "euler", "l2sq")


def test_optimal_schedule_draw_does_not_depend_on_batch_size():
    model = GrowingFlow(1.0)
    a = optimal_schedules(
        model, (2, 2), 3, SearchSettings(grid=10, num_samples=7, batch_size=7, objective="local")
    )[3]
    b = optimal_schedules(
        model, (2, 2), 3, SearchSettings(grid=10, num_samples=7, batch_size=2, objective="local")
    )[3]
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.cost == pytest.approx(b.cost, rel=1e-12)
    c = optimal_schedules(
        model, (2, 2), 3, SearchSettings(grid=10, num_samples=7, batch_size=2, seed=1, objective="local")
    )[3]
    assert c.cost != b.cost


def test_optimal_schedule_explicit_grid_plain_callable_and_options(tmp_path):
    grid = np.linspace(1e-3, 1.0, 11)
    calls = []

    def velocity(x, t):
        calls.append((x.dtype, x.shape[0]))
        return torch.sin(x) + t[:, None]

    sched = optimal_schedules(
        velocity,
        (4,),
        2,
        SearchSettings(grid=grid, num_samples=5, batch_size=3, solver="heun", metric="l2", objective="local"),
        dtype=torch.float64,
        device="cpu",
        checkpoint=tmp_path / "c.npz",
        checkpoint_key="velocity",
    )[2]
    assert sched.fingerprint is None and sched.grid[0] == 1e-3 and sched.times[-1] == 1.0
    assert (sched.solver, sched.metric) == ("heun", "l2")
    assert {c[0] for c in calls} == {torch.float64} and max(c[1] for c in calls) == 3
    assert (tmp_path / "c.npz").exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_steps": 10}, ValueError, "max_steps must be < the grid's 10 points"),
        ({"max_steps": 0}, ValueError, "max_steps must be >= 1"),
        ({"dtype": torch.int32}, TypeError, "floating dtype"),
        ({"shape": (2, 0)}, ValueError, "shape entry must be >= 1"),
        ({"settings": {"grid": 9}}, TypeError, "settings must be a SearchSettings, got dict"),
    ],
)
def test_optimal_schedules_bad_input(kwargs, error, match):
    """What needs the model or the shape is checked by the search; the settings check themselves."""
    args = {
        "shape": (2,),
        "max_steps": 3,
        "settings": SearchSettings(grid=9, num_samples=4, objective="local"),
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        optimal_schedules(GrowingFlow(), **args)


# ------------------------------------------------------------------------------------------ ScheduleSet


def wavy(x, t):
    return torch.sin(3.0 * x) * (1.0 + t.view(-1, 1))


# pinned: what version-1 files hold; the full DP: budget k is the search of budget k (not on the coarse route)
SEARCH = SearchSettings(grid=16, num_samples=8, start="zero", dp="full")
LOCAL = SearchSettings(grid=16, num_samples=8, objective="local")


@pytest.fixture(scope="module")
def local_set():
    return optimal_schedules(wavy, (3,), 4, LOCAL, dtype=torch.float64)


@pytest.fixture(scope="module")
def global_set():
    return optimal_schedules(wavy, (3,), 4, SEARCH, dtype=torch.float64)


@pytest.mark.parametrize("objective", ["local", "global"])
def test_every_budget_of_a_set_is_the_search_for_that_budget(objective, local_set, global_set):
    sset = local_set if objective == "local" else global_set
    assert isinstance(sset, ScheduleSet) and len(sset) == 4 and list(sset) == [1, 2, 3, 4]
    settings = LOCAL if objective == "local" else SEARCH
    for k, sched in sset.items():  # budget k does not depend on the largest budget searched
        assert sched == optimal_schedules(wavy, (3,), k, settings, dtype=torch.float64)[k]
    assert (sset.cost_table is not None) == (objective == "local")
    with pytest.raises(KeyError, match="K = 1 .. 4"):
        sset[5]


def test_a_local_set_resamples_exactly_as_a_fresh_search(local_set):
    for k in (5, 9):
        got = local_set.resample(k)
        assert got == optimal_schedules(wavy, (3,), k, LOCAL, dtype=torch.float64)[k]
        assert got.resampled_from is None
    assert local_set.resample(3) is local_set[3]
    with pytest.raises(ValueError, match="steps must be < the grid's 17 points"):
        local_set.resample(17)


def test_a_global_set_interpolates_and_says_so(global_set, tmp_path):
    got = global_set.resample(7)
    assert got.resampled_from == 4 and np.isnan(got.cost) and got.steps == 7
    assert got.objective == "global" and np.array_equal(got.grid, global_set.grid)
    np.testing.assert_array_equal(
        got.indices, snap_to_grid(got.grid, loglinear_times(global_set[4].times, 7))
    )
    got.save(tmp_path / "r.json")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["cost"] is None and doc["resampled_from"] == 4
    assert Schedule.load(tmp_path / "r.json") == got
    with pytest.raises(ValueError, match="resampled schedule's cost is unknown"):
        Schedule(times=got.times, indices=got.indices, grid=got.grid, cost=0.0, resampled_from=4)
    with pytest.raises(ValueError, match="cost must be finite"):
        Schedule(times=got.times, indices=got.indices, grid=got.grid, cost=float("nan"))


def test_schedule_for_steps_gives_only_what_a_search_gives(local_set, global_set, tmp_path):
    """The one K rule of ``boss-fast sigmas --steps K`` and the ComfyUI node: a set's own budgets; beyond
    them the DP on its cost table (= a fresh search); never an interpolation, never another single K."""
    assert max_budget(local_set) == 16 and max_budget(global_set) == 4 and max_budget(local_set[3]) == 3
    for k in (1, 4, 5, 16):
        got = schedule_for_steps(local_set, k, "L")
        assert got == optimal_schedules(wavy, (3,), k, LOCAL, dtype=torch.float64)[k]
        assert got.resampled_from is None
    assert schedule_for_steps(global_set, 4) is global_set[4]
    assert schedule_for_steps(local_set[3], 3) is local_set[3]
    with pytest.raises(
        ValueError, match=r"--steps 17: L gives K = 1\.\.16 \(K = 5\.\.16 re-solved .* 17 points"
    ):
        schedule_for_steps(local_set, 17, "L", "--steps")
    with pytest.raises(ValueError, match="steps 5: G holds K = 1..4 and no cost table .* max_steps >= 5"):
        schedule_for_steps(global_set, 5, "G")
    with pytest.raises(ValueError, match="steps 4: S is a 3-step schedule"):
        schedule_for_steps(local_set[3], 4, "S")
    for bad, error in (
        ("3", TypeError),
        (None, TypeError),
        (2.0, TypeError),
        (True, TypeError),
        (0, ValueError),
    ):
        with pytest.raises(error, match="steps must be"):
            schedule_for_steps(local_set, bad)
    local_set.save(tmp_path / "set.json")
    local_set[3].save(tmp_path / "k3.json")
    assert read_schedule_file(tmp_path / "set.json") == local_set
    assert read_schedule_file(str(tmp_path / "k3.json")) == local_set[3]
    (tmp_path / "other.json").write_text('{"format": "x"}')
    with pytest.raises(ValueError, match="other.json: neither a boss_fast schedule nor a schedule set"):
        read_schedule_file(tmp_path / "other.json")


def test_loglinear_interpolation_and_snapping():
    # Geometric sigmas stay geometric (log-linear is exact on them); the endpoints are kept exactly.
    times = np.concatenate([1.0 - 0.5 ** np.arange(5), [1.0]])  # sigmas 1, 1/2, ..., 1/16, 0
    got = loglinear_times(times, 9)
    np.testing.assert_allclose(1.0 - got[:-1], 0.5 ** (np.arange(9) / 2), rtol=1e-12)
    assert got[0] == 0.0 and got[-1] == 1.0
    assert np.array_equal(loglinear_times(times, 5), times) or np.allclose(loglinear_times(times, 5), times)
    # Snapping: nearest points, then made strictly increasing from 0 to N - 1 (crowded targets spread out).
    grid = uniform_grid(10)
    np.testing.assert_array_equal(snap_to_grid(grid, np.array([0.0, 0.31, 0.68, 1.0])), [0, 3, 7, 10])
    np.testing.assert_array_equal(snap_to_grid(grid, np.array([0.0, 0.99, 0.995, 1.0])), [0, 8, 9, 10])
    np.testing.assert_array_equal(snap_to_grid(grid, np.linspace(0, 1, 11) ** 8), np.arange(11))
    # A schedule interpolated to its own budget is itself.
    sset = schedules_from_cost(quadratic_cost(uniform_grid(20)), 6, grid=uniform_grid(20))
    for k in range(2, 7):
        np.testing.assert_array_equal(interpolate_schedule(sset[k], k).indices, sset[k].indices)
    with pytest.raises(ValueError, match="at least 2 steps"):
        interpolate_schedule(sset[1], 3)


@pytest.mark.parametrize("objective", ["local", "global"])
def test_a_saved_set_round_trips(objective, local_set, global_set, tmp_path):
    sset = local_set if objective == "local" else global_set
    sset.save(tmp_path / "s.json")
    back = ScheduleSet.load(tmp_path / "s.json")
    assert back == sset and back[3] == sset[3]
    if objective == "local":  # float64 exact: the table re-solves to the same schedules
        assert np.array_equal(back.cost_table, sset.cost_table)
        assert back.resample(8) == sset.resample(8)
    assert os.listdir(tmp_path) == ["s.json"]  # written through a temporary file, renamed


def _edit(path, change, rehash=False):
    doc = json.loads(path.read_text())
    change(doc)
    if rehash:
        doc["sha256"] = content_digest(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("change", "rehash", "message"),
    [
        (
            lambda d: d["budgets"][1].update(cost=d["budgets"][1]["cost"] * 1.001),
            False,
            "sha256 does not match",
        ),
        (lambda d: d["grid"].__setitem__(3, 0.19), False, "sha256 does not match"),
        (lambda d: d["cost_table_upper"].__setitem__(7, 99.0), False, "sha256 does not match"),
        (lambda d: d.__setitem__("version", 7), False, "unsupported schedule set version 7"),
        (lambda d: d.__setitem__("format", "boss_fast.schedule"), False, "use Schedule.load"),
        (lambda d: d.pop("cost_table_upper"), False, "missing key(s) cost_table_upper"),
        # Edited and re-hashed: the content itself is checked (the DP on the table, the grid, the budgets).
        (lambda d: d["budgets"][2].update(indices=[0, 3, 9, 16]), True, "budget 3 is not the Bellman DP's"),
        # cost[0, 16] = 0: the 1-step jump becomes free
        (lambda d: d["cost_table_upper"].__setitem__(15, 0.0), True, "budget 1 is not the Bellman DP's"),
        (lambda d: d["budgets"].pop(1), True, "budgets 1 .. max_steps once each"),
        (lambda d: d["budgets"][0].update(indices=[0, 99]), True, "outside the grid"),
        (lambda d: d.__setitem__("solver", "magic"), True, "unknown solver"),
    ],
)
def test_a_tampered_set_is_refused_by_name(local_set, tmp_path, change, rehash, message):
    path = tmp_path / "s.json"
    local_set.save(path)
    _edit(path, change, rehash)
    with pytest.raises(ValueError, match=re.escape(message)):
        ScheduleSet.load(path)


def test_set_files_refused_before_reading_and_at_save(local_set, tmp_path, monkeypatch):
    path = tmp_path / "s.json"
    local_set.save(path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="not valid JSON"):
        ScheduleSet.load(path)
    monkeypatch.setattr(schedule_module, "MAX_FILE_BYTES", 50_000)
    with pytest.raises(ValueError, match=r"would take .* MiB \(a cost table on a grid of 81 points\)"):
        optimal_schedules(wavy, (3,), 2, SearchSettings(objective="local", grid=80, num_samples=2)).save(
            tmp_path / "big.json"
        )
    assert not (tmp_path / "big.json").exists()
    ScheduleSet(local_set.values()).save(tmp_path / "small.json")  # without the table it fits
    assert ScheduleSet.load(tmp_path / "small.json").cost_table is None


def test_set_construction_errors(local_set, global_set):
    with pytest.raises(TypeError, match="one or more Schedule"):
        ScheduleSet([])
    with pytest.raises(ValueError, match="budgets 1 .. max_steps once each"):
        ScheduleSet([local_set[1], local_set[3]])
    with pytest.raises(ValueError, match="budget 2 has solver = 'heun'"):
        ScheduleSet([local_set[1], global_set[2]])
    with pytest.raises(ValueError, match="a global set has none"):
        ScheduleSet(global_set.values(), cost_table=local_set.cost_table)
    with pytest.raises(ValueError, match="was resampled"):
        ScheduleSet([global_set[1], interpolate_schedule(global_set[3], 2)])


def test_as_tensor_is_the_exact_times_on_a_device_and_dtype():
    sched = make_schedule()
    times = sched.as_tensor()
    assert times.dtype == torch.float64 and times.tolist() == sched.times.tolist()  # exact, not rounded
    narrow = sched.as_tensor(device="cpu", dtype=torch.float32)
    assert narrow.dtype == torch.float32 and narrow.device.type == "cpu"
    assert narrow.tolist() == torch.tensor(sched.times, dtype=torch.float32).tolist()
    assert not hasattr(sched, "to")  # a Schedule is not a tensor: .to() would promise a Schedule back


# Refusals: nothing silently wrong (from the former tests/test_refusals.py)


def _local_set(max_steps=5, n=21):
    grid = np.linspace(0.0, 1.0, n)
    i = np.arange(n, dtype=np.float64)
    weight = 1.0 + 0.3 * np.sin(i)  # uneven, so the DP's answers are unique
    cost = np.triu(np.square(np.subtract.outer(i, i)) * np.add.outer(weight, weight), 1)
    return bf.schedules_from_cost(cost, max_steps, grid=grid)


def _rehashed(doc):
    doc["sha256"] = content_digest(doc)
    return doc


def test_a_set_file_refuses_negative_and_budget_changing_table_edits():
    sset = _local_set()
    n = len(sset.grid)
    doc = sset.to_dict()
    upper = list(doc["cost_table_upper"])
    # A negative cost (an error is >= 0), re-hashed: refused by name (loaded before).
    edited = dict(doc, cost_table_upper=[*upper[:5], -1.0, *upper[6:]])
    with pytest.raises(ValueError, match=r"cost_table\[0, 6\] = -1\.0 is negative"):
        bf.ScheduleSet.from_dict(_rehashed(edited), "neg.json")
    # An entry on budget 2's path, raised and re-hashed: the DP check refuses it.
    path = sset[2].indices
    k = int(np.flatnonzero((np.triu_indices(n, 1)[0] == path[0]) & (np.triu_indices(n, 1)[1] == path[1]))[0])
    raised = dict(doc, cost_table_upper=[*upper[:k], upper[k] * 1000, *upper[k + 1 :]])
    with pytest.raises(ValueError, match="budget 2 is not the Bellman DP's answer"):
        bf.ScheduleSet.from_dict(_rehashed(raised), "edited.json")


def test_the_documented_limit_an_edit_that_keeps_every_saved_budget_optimal_loads():
    """What the checks cannot see (ScheduleSet's docstring; docs/api.md, "Errors and what each file is checked
    for"): raising an entry that only a larger budget uses keeps budgets 1..5 optimal at the same cost, so the
    re-hashed file loads and resample(6) answers on the edited table. This pins the docs to the code."""
    sset = _local_set()
    n = len(sset.grid)
    six = sset.resample(6).indices
    used = {
        (int(a), int(b)) for s in sset.values() for a, b in zip(s.indices[:-1], s.indices[1:], strict=True)
    }
    edge = next(
        (int(a), int(b)) for a, b in zip(six[:-1], six[1:], strict=True) if (int(a), int(b)) not in used
    )
    rows, cols = np.triu_indices(n, 1)
    k = int(np.flatnonzero((rows == edge[0]) & (cols == edge[1]))[0])
    doc = sset.to_dict()
    upper = list(doc["cost_table_upper"])
    doc["cost_table_upper"] = [*upper[:k], upper[k] * 1000, *upper[k + 1 :]]
    loaded = bf.ScheduleSet.from_dict(_rehashed(doc), "edited.json")
    assert list(loaded.values()) == list(sset.values())
    assert loaded.resample(6).indices.tolist() != six.tolist()


def test_a_set_file_with_an_out_of_range_number_names_the_file_and_field(tmp_path):
    path = tmp_path / "s.json"
    _local_set().save(path)
    doc = json.loads(path.read_text())
    text = json.dumps(doc).replace(json.dumps(doc["grid"][1]), "1e999", 1)
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"{path}: grid\[1\] = 1e999 is beyond float64's range"):
        bf.ScheduleSet.load(path)


# ------------------------------------------------------------------------------------------ the start rule


def test_the_start_rule_decides_where_a_schedule_may_start():
    grid = uniform_grid(8)
    late = {"times": grid[[2, 5, 8]], "indices": np.array([2, 5, 8])}
    with pytest.raises(
        ValueError, match=r"start 'zero' pins the first time at grid\[0\], but indices\[0\] = 2"
    ):
        make_schedule(**late)
    for rule in ("noise", "scaled"):
        sched = make_schedule(**late, start=rule)
        assert sched.start == rule and sched.times[0] == 0.25 and sched.steps == 2
        assert sched != make_schedule(**late, start="scaled" if rule == "noise" else "noise")
    with pytest.raises(ValueError, match="unknown start"):
        make_schedule(start="late")
    assert make_schedule().start == "zero"  # the default: BOSS's pinned start


def test_the_start_rule_round_trips_and_old_files_load_as_zero(tmp_path):
    grid = uniform_grid(8)
    sched = make_schedule(times=grid[[3, 6, 8]], indices=np.array([3, 6, 8]), start="scaled")
    sched.save(tmp_path / "s.json")
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["version"] == 2 and doc["start"] == "scaled"
    assert Schedule.load(tmp_path / "s.json") == sched
    old = make_schedule().to_dict()  # a pinned start is written as version 1 was, without the key
    assert old["version"] == 1 and "start" not in old
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert Schedule.load(tmp_path / "old.json").start == "zero"
    v2_zero = {
        **doc,
        "start": "zero",
        "times": old["times"],
        "indices": old["indices"],
        "steps": old["steps"],
    }
    (tmp_path / "v2.json").write_text(json.dumps(v2_zero))
    assert Schedule.load(tmp_path / "v2.json") == make_schedule(
        times=np.array(old["times"]), indices=np.array(old["indices"])
    )
    old["start"] = "noise"  # a version-1 file cannot hold the rule: an edit
    (tmp_path / "edited.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="version-1 file has no start rule"):
        Schedule.load(tmp_path / "edited.json")
    del doc["start"]
    (tmp_path / "missing.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="missing key start"):
        Schedule.load(tmp_path / "missing.json")


def _late_set(start):
    grid = uniform_grid(10)
    paths = {1: [4, 10], 2: [3, 6, 10], 3: [2, 4, 7, 10], 4: [1, 3, 5, 7, 10]}
    return ScheduleSet(
        Schedule(times=grid[p], indices=np.array(p), cost=0.1 * k, grid=grid, objective="global", start=start)
        for k, p in paths.items()
    )


def test_a_set_carries_one_start_rule_and_old_set_files_load_as_zero(global_set, tmp_path):
    sset = _late_set("noise")
    sset.save(tmp_path / "set.json")
    loaded = ScheduleSet.load(tmp_path / "set.json")
    assert loaded == sset and loaded[3].start == "noise" and loaded[3].indices[0] == 2
    doc = global_set.to_dict()
    assert doc["version"] == 1 and "start" not in doc  # a pinned set: version 1, as written before the rule
    (tmp_path / "old.json").write_text(json.dumps(doc))
    assert all(s.start == "zero" for s in ScheduleSet.load(tmp_path / "old.json").values())
    mixed = [*_late_set("noise").values()][:2] + [*_late_set("scaled").values()][2:]
    with pytest.raises(ValueError, match="budget 3 has start = 'scaled' but budget 1 has 'noise'"):
        ScheduleSet(mixed)


def test_interpolation_keeps_a_free_start():
    sset = _late_set("scaled")
    k6 = sset.resample(6)
    assert k6.start == "scaled" and k6.times[0] == sset[4].times[0] and k6.resampled_from == 4
    assert k6.indices.tolist() == sorted(set(k6.indices.tolist())) and k6.indices[-1] == 10
    pinned = interpolate_schedule(make_schedule(), 4)
    assert pinned.indices[0] == 0
