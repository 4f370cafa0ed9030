"""The global objective: the DP over the sampler's own states (boss_fast.global_objective) and its API."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _helpers import CountedRows, seeded_randn

import boss_fast as bf
from boss_fast._checkpoint import CHECKSUM_KEY
from boss_fast.global_objective import (
    GlobalPass,
    global_paths,
    global_table,
    start_extra_evaluations,
    start_sources,
)
from boss_fast.models.gmm import GaussianMixtureFlow, eight_gaussians
from boss_fast.ode import start_state
from boss_fast.schedule import Schedule, schedules_from_cost
from boss_fast.search import SearchSettings, optimal_schedules


def wavy(x, t):
    return torch.sin(3.0 * x) * (1.0 + t.view(-1, 1))


def one_gaussian() -> GaussianMixtureFlow:
    """Data N(mu, 0.1^2 I) in 2-D: the flow is x_t = t mu + sqrt(t^2 s^2 + (1 - t)^2) x_0 exactly."""
    return GaussianMixtureFlow(torch.tensor([[1.5, -0.5]], dtype=torch.float64), torch.tensor([0.1]))


def exact_one_gaussian(noise: torch.Tensor, t: float) -> torch.Tensor:
    mu = torch.tensor([1.5, -0.5], dtype=torch.float64)
    return t * mu + (t**2 * 0.01 + (1 - t) ** 2) ** 0.5 * noise


def brute_force_recursion(velocity, noise, times, max_steps, solver="heun", rule="zero"):
    """The recursion of the module docstring, one (k, i, j) at a time in float64 (no pairwise kernel); with a
    free start ``rule``, level 0 at every grid point j < N - 1 (the rule's start state there)."""
    teacher = bf.teacher_trajectory(velocity, noise, times, solver, record="states").states
    n = len(times)
    costs = np.full((max_steps + 1, n), np.inf)
    pointers = np.full((max_steps + 1, n), -1, dtype=np.int64)
    starts = [0] if rule == "zero" else range(n - 1)  # grid point -> state of the previous level
    states = {j: start_state(noise, rule, float(times[j])) for j in starts}
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
    return costs, pointers, teacher


# --------------------------------------------------------------------------------- the recursion itself


@pytest.mark.parametrize("flow", ["one_gaussian", "eight_gaussians"])
def test_recursion_equals_a_brute_force_transcription(flow):
    velocity = one_gaussian() if flow == "one_gaussian" else eight_gaussians()
    noise = torch.randn(40, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    times = bf.uniform_grid(12)
    table = global_table(velocity, noise, times, 4, GlobalPass(batch_size=16, solver="rk4"), progress=False)
    costs, pointers, teacher = brute_force_recursion(velocity, noise, times, 4, solver="rk4")
    np.testing.assert_array_equal(table.pointers, pointers)
    np.testing.assert_allclose(table.costs, costs, rtol=1e-11, atol=1e-15)
    if flow == "one_gaussian":  # the 11-step RK4 teacher vs the closed form: 7.5e-4 measured (std 0.1)
        np.testing.assert_allclose(teacher[-1], exact_one_gaussian(noise, 1.0), atol=2e-3)


def test_the_end_state_is_what_the_sampler_returns():
    """S[k][N - 1] is built with the sampler's own Euler step: its error is the sampler's error."""
    noise = torch.randn(30, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    times = bf.uniform_grid(16)
    table = global_table(wavy, noise, times, 5, GlobalPass(batch_size=30), progress=False)
    end = bf.teacher_trajectory(wavy, noise, times, "heun").states[-1]
    for path in global_paths(table):
        x = bf.sample(wavy, noise, times[path.indices])
        assert path.cost == pytest.approx(float((x - end).square().sum(1).mean()), rel=1e-13)


def _endpoint_error(velocity, noise, times, target):
    return float((bf.sample(velocity, noise, times) - target).square().sum(1).mean())


# Measured (Heun teacher): the DP's path is the best of all grid paths in 7 of 9 cases; 3.0% worse (wavy,
# K = 3) and 0.37% worse (wavy, K = 4) in the others.
BRUTE = [("one_gaussian", 2, 1.0), ("one_gaussian", 3, 1.0), ("one_gaussian", 4, 1.0),
         ("eight_gaussians", 2, 1.0), ("eight_gaussians", 3, 1.0), ("eight_gaussians", 4, 1.0),
         ("wavy", 2, 1.0), ("wavy", 3, 1.031), ("wavy", 4, 1.004)]  # fmt: skip


@pytest.mark.parametrize(("flow", "steps", "factor"), BRUTE)
def test_dp_path_against_brute_force_over_all_grid_paths(flow, steps, factor):
    """The DP keeps one state per (k, j), so it is not an exhaustive search over all C(14, K - 1) grid paths;
    how far it was is in BRUTE's factors."""
    velocity = {"one_gaussian": one_gaussian(), "eight_gaussians": eight_gaussians(), "wavy": wavy}[flow]
    dim = 3 if flow == "wavy" else 2
    noise = torch.randn(64, dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    times = bf.uniform_grid(15)
    table = global_table(velocity, noise, times, steps, progress=False)
    target = bf.teacher_trajectory(velocity, noise, times, "heun", record="states").states[-1]
    dp = global_paths(table)[-1]
    best = min(
        _endpoint_error(velocity, noise, times[[0, *inner, len(times) - 1]], target)
        for inner in itertools.combinations(range(1, len(times) - 1), steps - 1)
    )
    got = _endpoint_error(velocity, noise, times[dp.indices], target)
    assert got == pytest.approx(dp.cost, rel=1e-12)
    assert best <= got <= factor * best * (1 + 1e-12)


# ------------------------------------------------------------------------- batching and processes


def test_independent_of_batch_size():
    noise = torch.randn(23, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    times = bf.uniform_grid(14)
    ref = global_table(wavy, noise, times, 6, GlobalPass(batch_size=23), progress=False)
    for batch in (1, 4, 10):
        got = global_table(wavy, noise, times, 6, GlobalPass(batch_size=batch), progress=False)
        np.testing.assert_array_equal(got.pointers, ref.pointers)
        np.testing.assert_allclose(got.costs, ref.costs, rtol=1e-13)


WORLD, NUM_SAMPLES, BATCH = 2, 19, 4


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        path = os.path.join(out_dir, "own.npz")
        scheds = optimal_schedules(
            wavy,
            (3,),
            4,
            SearchSettings(grid=16, num_samples=NUM_SAMPLES, batch_size=BATCH),
            dtype=torch.float64,
            checkpoint=path,
            checkpoint_key="f",
        )
        np.save(os.path.join(out_dir, f"idx{rank}.npy"), np.concatenate([s.indices for s in scheds.values()]))
        np.save(os.path.join(out_dir, f"cost{rank}.npy"), np.array([s.cost for s in scheds.values()]))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_reduce_to_the_single_process_result(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    single = optimal_schedules(
        wavy, (3,), 4, SearchSettings(grid=16, num_samples=NUM_SAMPLES, batch_size=BATCH), dtype=torch.float64
    )
    want_idx = np.concatenate([s.indices for s in single.values()])
    want_cost = np.array([s.cost for s in single.values()])
    for r in range(WORLD):
        np.testing.assert_array_equal(np.load(tmp_path / f"idx{r}.npy"), want_idx)
        np.testing.assert_allclose(np.load(tmp_path / f"cost{r}.npy"), want_cost, rtol=1e-13)
        with np.load(tmp_path / f"own.rank{r}-of-{WORLD}.npz") as stored:
            assert int(stored["levels_done"]) == 4 and int(stored["rank"]) == r


# ------------------------------------------------------------------------------ the local objective


# Computed by optimal_schedule (one budget; now optimal_schedules(...)[K]) before the global objective
# existed (same noises, grid and arguments).
LOCAL_BEFORE = [
    ({"solver": "euler"}, [0, 8, 15, 22, 30], 0.019092603614207823),
    ({"solver": "rk4", "metric": "l2"}, [0, 9, 17, 23, 30], 0.28457945695400066),
    ({"solver": "heun", "grid": bf.shifted_grid(20, 3.0)}, [0, 10, 15, 18, 20], 0.02607393799898026),
]


@pytest.mark.parametrize(("kwargs", "indices", "cost"), LOCAL_BEFORE)
def test_local_objective_is_unchanged(kwargs, indices, cost):
    settings = SearchSettings(
        **{"grid": 30, **kwargs}, num_samples=23, batch_size=8, seed=5, objective="local"
    )
    sched = optimal_schedules(wavy, (3,), 4, settings, dtype=torch.float64)[4]
    # The indices are exact; the cost is a float64 mean over 23 samples whose summation order another torch
    # build or thread count may change: n * eps ~ 23 * 2.2e-16 = 5e-15 relative, so 1e-12 allows for that
    # and is still far below any change in the search (the three budgets' costs differ in the 2nd digit).
    assert sched.indices.tolist() == indices and sched.objective == "local"
    assert sched.cost == pytest.approx(cost, rel=1e-12, abs=0.0)


def test_local_path_bits_and_the_generalised_kernel():
    """Jumps that start at the teacher's own states give the BOSS matrix bit for bit; every budget of
    optimal_schedules equals the Bellman DP on cost_matrix."""
    noise = bf.seeded_noise((3,), 0, 12, seed=0, dtype=torch.float64)
    times = bf.uniform_grid(20)
    traj = bf.teacher_trajectory(wavy, noise, times, "heun")
    for metric in ("l2sq", "l2"):
        plain, _ = bf.cost.trajectory_cost_sums(traj.states, traj.velocities, times, metric)
        own, _ = bf.cost.trajectory_cost_sums(
            traj.states, traj.velocities, times, metric, starts=traj.states[:-1]
        )
        np.testing.assert_array_equal(own, plain)
    cost = bf.cost_matrix(wavy, noise, times, batch_size=5, solver="heun", progress=False)
    scheds = optimal_schedules(
        wavy,
        (3,),
        5,
        SearchSettings(objective="local", grid=20, num_samples=12, batch_size=5, solver="heun"),
        dtype=torch.float64,
    )
    assert scheds == schedules_from_cost(cost, 5, grid=times, solver="heun", num_samples=12, shape=(3,))


def test_generalised_kernel_against_the_definition():
    gen = torch.Generator().manual_seed(4)
    x, v, a = (torch.randn(9, 5, 4, generator=gen) for _ in range(3))
    x, a = x, a[:-1]
    v = v[:-1]
    times = np.sort(np.random.default_rng(0).uniform(size=9))
    sums, count = bf.cost.trajectory_cost_sums(x, v, times, starts=a)
    want = np.zeros((9, 9))
    for i in range(8):
        for j in range(i + 1, 9):
            e = x[j].double() - (a[i].double() + (times[j] - times[i]) * v[i].double())
            want[i, j] = float(e.square().sum())
    assert count == 5
    np.testing.assert_allclose(sums, want, rtol=1e-13, atol=1e-13)


# ------------------------------------------------------------------------------------------ the API


def test_optimal_schedules_global_is_the_default_and_every_budget_is_its_own_search(tmp_path):
    settings = SearchSettings(grid=16, num_samples=10, batch_size=4)
    scheds = optimal_schedules(wavy, (3,), 4, settings, dtype=torch.float64)
    assert sorted(scheds) == [1, 2, 3, 4]
    for k, sched in scheds.items():
        assert sched.objective == "global" and sched.solver == "heun" and sched.steps == k
        assert optimal_schedules(wavy, (3,), k, settings, dtype=torch.float64)[k] == sched
    scheds[3].save(tmp_path / "g.json")
    loaded = Schedule.load(tmp_path / "g.json")
    assert loaded == scheds[3] and loaded.objective == "global"


def test_old_schedule_files_load_as_local(tmp_path):
    doc = bf.schedules_from_cost(np.triu(np.ones((5, 5)), 1), 2, grid=bf.uniform_grid(4))[2].to_dict()
    del doc["objective"]
    (tmp_path / "old.json").write_text(json.dumps(doc))
    assert Schedule.load(tmp_path / "old.json").objective == "local"
    doc["objective"] = "best"
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="unknown objective 'best'"):
        Schedule.load(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"objective": "endpoint"},
            ValueError,
            "unknown objective 'endpoint'; expected one of 'global', 'local'",
        ),
        ({"objective": None}, ValueError, "unknown objective None"),
        ({"discount": 0.9}, ValueError, "discount weights the local objective"),
        ({"backend": "numba"}, ValueError, "objective='global' runs its own DP"),
        ({"solver": "dopri5", "mode": "eager"}, ValueError, "takes mode=None"),
        ({"num_samples": 0}, ValueError, "num_samples must be >= 1"),
    ],
)
def test_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        SearchSettings(**{"grid": 8, "num_samples": 4, **kwargs})


def test_global_pass_refuses_a_disk_store_dir_that_is_no_folder(tmp_path):
    """GlobalPass(store="disk") with a missing store_dir failed in the first level's row file
    (FileNotFoundError on an internal name): refused at construction, naming the field."""
    with pytest.raises(ValueError, match="store_dir .*missing' does not exist"):
        GlobalPass(store="disk", store_dir=tmp_path / "missing")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="store_dir .*afile' is a file"):
        GlobalPass(store="disk", store_dir=tmp_path / "afile")
    assert GlobalPass(store="disk", store_dir=tmp_path).store_dir == tmp_path


def test_max_steps_beyond_the_grid_is_refused_by_the_search():
    with pytest.raises(ValueError, match="max_steps must be < the grid's 9 points"):
        optimal_schedules(wavy, (3,), 9, SearchSettings(grid=8, num_samples=4))


def test_global_table_bad_input():
    noise = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="max_steps must be < len"):
        global_table(wavy, noise, bf.uniform_grid(4), 5, progress=False)
    calls = {"n": 0}

    def late_nan(x, t):  # finite for the 3-step Euler teacher and level 1, NaN from level 2 on
        calls["n"] += 1
        return wavy(x, t) * (float("nan") if calls["n"] > 4 else 1.0)

    with pytest.raises(ValueError, match="non-finite values at the sampler's own 1-step states"):
        global_table(late_nan, noise, bf.uniform_grid(3), 2, GlobalPass(solver="euler"), progress=False)
    with pytest.raises(ValueError, match="starts must have shape"):
        bf.cost.trajectory_cost_sums(torch.zeros(4, 2, 3), torch.zeros(3, 2, 3), bf.uniform_grid(3),
                                starts=torch.zeros(4, 2, 3))  # fmt: skip


# ----------------------------------------------------------------------------------------- checkpoint


class Interrupted(RuntimeError):
    pass


def test_checkpoint_resumes_bit_for_bit_and_refuses_foreign_runs(tmp_path):
    noise = torch.randn(11, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    times = bf.uniform_grid(12)
    want = global_table(wavy, noise, times, 4, GlobalPass(batch_size=4), progress=False)
    calls = {"n": 0}

    def flaky(x, t):  # dies during level 3 (after the teacher and two levels)
        calls["n"] += 1
        if calls["n"] > 3 * (24 + 1) + 3 * 11 + 5:  # Heun teacher + level 1, level 2, part of level 3
            raise Interrupted
        return wavy(x, t)

    path = tmp_path / "own.npz"
    with pytest.raises(Interrupted):
        global_table(
            flaky,
            noise,
            times,
            4,
            GlobalPass(batch_size=4),
            progress=False,
            checkpoint=path,
            checkpoint_key="f",
        )
    with np.load(path) as stored:
        assert int(stored["levels_done"]) == 2
    got = global_table(
        wavy, noise, times, 4, GlobalPass(batch_size=4), progress=False, checkpoint=path, checkpoint_key="f"
    )
    np.testing.assert_array_equal(got.costs, want.costs)
    np.testing.assert_array_equal(got.pointers, want.pointers)
    with pytest.raises(ValueError, match="different run: noise"):
        global_table(
            wavy,
            noise + 1,
            times,
            4,
            GlobalPass(batch_size=4),
            progress=False,
            checkpoint=path,
            checkpoint_key="f",
        )
    with pytest.raises(ValueError, match="different run: max_steps"):
        global_table(
            wavy,
            noise,
            times,
            3,
            GlobalPass(batch_size=4),
            progress=False,
            checkpoint=path,
            checkpoint_key="f",
        )
    np.savez(tmp_path / "cost.npz", format=np.array("boss_fast.cost_checkpoint"))
    with pytest.raises(ValueError, match="not a boss_fast own-state checkpoint"):
        global_table(
            wavy, noise, times, 4, progress=False, checkpoint=tmp_path / "cost.npz", checkpoint_key="f"
        )
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match="unreadable"):
        global_table(
            wavy, noise, times, 4, progress=False, checkpoint=tmp_path / "junk.npz", checkpoint_key="f"
        )


# ---------------------------------------------------------------------------------------- quality


def test_global_beats_uniform_and_local_on_eight_gaussians_at_two_steps():
    """Fitted on 256 noises, judged on 2000 others against dopri5: measured mean squared endpoint error 0.502
    (uniform, t = 0.5), 0.549 (local, t = 0.48), 0.331 (global, t = 0.65)."""
    flow = eight_gaussians()
    scheds = optimal_schedules(flow, (2,), 2, SearchSettings(grid=100, num_samples=256))
    local = optimal_schedules(flow, (2,), 2, SearchSettings(grid=100, num_samples=256, objective="local"))[2]
    noise = bf.seeded_noise((2,), 0, 2000, seed=1, dtype=torch.float64)
    ref = bf.reference_solution(flow, noise)
    errors = {
        name: float((bf.sample(flow, noise, times) - ref).square().sum(1).mean())
        for name, times in (
            ("uniform", bf.uniform_grid(2)),
            ("local", local.times),
            ("global", scheds[2].times),
        )
    }
    assert errors["global"] < 0.8 * errors["uniform"] and errors["global"] < 0.8 * errors["local"], errors


@pytest.mark.parametrize(
    ("field", "edit"),
    [
        ("levels_done", lambda s: s.update(levels_done=np.int64(7))),
        ("levels_done", lambda s: s.update(levels_done=np.int64(-1))),
        ("pointers", lambda s: s["pointers"].__setitem__((2, 5), 5)),
        ("pointers", lambda s: s["pointers"].__setitem__((1, 3), -1)),
        ("costs", lambda s: s["costs"].__setitem__((2, 4), np.nan)),
        ("costs", lambda s: s["costs"].__setitem__((3, 6), np.inf)),
    ],
)
def test_a_global_checkpoint_with_edited_fields_is_refused(tmp_path, field, edit):
    """Refused by the checksum, and without one (a file written before it existed) by the table's checks."""
    path, stored, again = _written_table(tmp_path)
    edit(stored)
    np.savez(path, **stored)
    with pytest.raises(ValueError, match=r"own\.npz fails its checksum"):
        again()
    del stored[CHECKSUM_KEY]
    np.savez(path, **stored)
    with pytest.raises(ValueError, match=rf"own\.npz: {field} "):
        again()


def _written_table(tmp_path):
    """(path, its arrays, a rerun on it) of a finished 4-level table of ``wavy`` on a 12-step grid."""
    noise = torch.randn(9, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    times = bf.uniform_grid(12)
    path = tmp_path / "own.npz"
    args = {"progress": False, "checkpoint": path, "checkpoint_key": "wavy"}
    global_table(wavy, noise, times, 4, GlobalPass(batch_size=4), **args)
    with np.load(path) as data:
        stored = {key: data[key].copy() for key in data.files}
    return path, stored, lambda: global_table(wavy, noise, times, 4, GlobalPass(batch_size=4), **args)


def _moved_pointer(stored: dict) -> None:
    """Level 2's pointer at the last point moved to another point level 1 reached: a valid-looking table."""
    ptrs = stored["pointers"]
    ptrs[2, -1] = 1 if ptrs[2, -1] != 1 else 2


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.update(costs=s["costs"] * 2),  # each of these was accepted on main
        _moved_pointer,
        lambda s: s["costs"].__setitem__((4, -1), s["costs"][4, -1] / 2),  # the 4-step cost halved
    ],
)
def test_a_global_checkpoint_whose_arrays_differ_from_its_checksum_is_refused(tmp_path, edit):
    path, stored, again = _written_table(tmp_path)
    again()  # an intact file loads
    edit(stored)
    np.savez(path, **stored)
    with pytest.raises(ValueError, match=r"own-state checkpoint .*own\.npz fails its checksum"):
        again()
    del stored[CHECKSUM_KEY]  # as an older version wrote it: no checksum, read as it is (docs/api.md)
    np.savez(path, **stored)
    got = again()
    np.testing.assert_array_equal(got.costs, stored["costs"])
    np.testing.assert_array_equal(got.pointers, stored["pointers"])


def test_a_global_checkpoint_missing_costs_or_of_float32_costs_names_the_problem(tmp_path):
    path, stored, again = _written_table(tmp_path)
    del stored[CHECKSUM_KEY]
    cases = [
        (
            {k: v for k, v in stored.items() if k != "costs"},
            r"own\.npz lacks 'costs' \(a float64 array of shape \(5, 13\)",
        ),
        (
            {**stored, "costs": stored["costs"].astype(np.float32)},
            "'costs' of dtype float32, expected float64",
        ),
        (
            {**stored, "pointers": stored["pointers"][:, :4]},
            r"'pointers' of shape \(5, 4\), expected \(5, 13\)",
        ),
        ({k: v for k, v in stored.items() if k != "levels_done"}, "lacks 'levels_done'"),
    ]
    for edited, match in cases:
        np.savez(path, **edited)
        with pytest.raises(ValueError, match=match):
            again()


def test_global_table_needs_a_key_for_a_plain_function_and_refuses_another(tmp_path):
    noise = torch.randn(9, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    times = bf.uniform_grid(12)
    path = tmp_path / "own.npz"
    with pytest.raises(ValueError, match="checkpoint_key="):
        global_table(wavy, noise, times, 3, progress=False, checkpoint=path)
    global_table(wavy, noise, times, 3, progress=False, checkpoint=path, checkpoint_key="wavy")
    with pytest.raises(ValueError, match="different run: model ="):
        global_table(lambda x, t: -x, noise, times, 3, progress=False, checkpoint=path, checkpoint_key="neg")


# ------------------------------------------------------------------- the start as a DP variable (free start)

# Computed at commit 3a03114 (before the start became a DP variable) by the same call as below:
# global_table(wavy, seeded_randn(20, 3, 11), uniform_grid(14), 5, GlobalPass(batch_size=6)).
PINNED_BEFORE = [
    ([0, 14], 0.5338496735397473),
    ([0, 10, 14], 0.09325065572045489),
    ([0, 7, 11, 14], 0.039908255278234155),
    ([0, 5, 8, 11, 14], 0.02211063938907724),
    ([0, 3, 6, 9, 12, 14], 0.0135022329181237),
]


def test_the_pinned_start_gives_the_schedules_computed_before_the_change():
    """The same knots, and the same costs to rounding: the last bit of a cost depends on torch's thread count
    (its reductions split by threads; K = 2 differs in the 17th digit under OMP_NUM_THREADS=1)."""
    table = global_table(wavy, seeded_randn(20, 3, 11), bf.uniform_grid(14), 5, GlobalPass(batch_size=6),
                         progress=False)  # fmt: skip
    paths = global_paths(table)
    assert [p.indices.tolist() for p in paths] == [indices for indices, _ in PINNED_BEFORE]
    assert [p.cost for p in paths] == pytest.approx([cost for _, cost in PINNED_BEFORE], rel=1e-12, abs=0)


def test_a_flow_at_rest_then_straight_starts_where_it_turns_straight():
    """v = 0 for t < t*, a constant c from t* on: from the noise at t*, one Euler step is exact (cost 0), from
    any earlier start it misses (1 - t*) c, from a later one (t_s - t*) c: the 1-step "noise" DP starts at t*;
    with more steps any start up to t* followed by a knot at t* is exact too (round-off: 1e-31)."""
    times, star = bf.uniform_grid(20), 7
    c = torch.tensor([2.0, -1.0], dtype=torch.float64)

    def rest_then_straight(x, t):
        return (t >= times[star] - 1e-12).to(x.dtype)[:, None] * c

    run = GlobalPass(batch_size=16, solver="euler", start="noise")
    table = global_table(rest_then_straight, seeded_randn(16, 2, 0), times, 4, run, progress=False)
    paths = global_paths(table)
    assert paths[0].indices.tolist() == [star, 20]
    for path in paths:
        assert path.indices[0] <= star and star in path.indices and path.cost < 1e-28
    pinned = global_table(rest_then_straight, seeded_randn(16, 2, 0), times, 1, GlobalPass(solver="euler"),
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
    noise = seeded_randn(64, 3, 1)
    table = global_table(lambda x, t: -x, noise, times, 1, GlobalPass(solver="rk4", start=rule),
                         progress=False)  # fmt: skip
    path = global_paths(table)[0]
    nearest = int(np.argmin(np.abs(times - best_t)))
    assert path.indices.tolist() == [nearest, 40]
    t = times[nearest]
    scale = 1.0 if rule == "noise" else 1.0 - t
    closed = (t * scale - math.exp(-1.0)) ** 2 * float(noise.square().sum(1).mean())
    assert path.cost == pytest.approx(closed, rel=1e-6)  # the RK4 teacher's error: about 1e-9 relative


def brute_force_free_start(velocity, noise, times, max_steps, rule):
    """The recursion with a free start (level 0 at every grid point j < N - 1): costs and pointers."""
    return brute_force_recursion(velocity, noise, times, max_steps, "heun", rule)[:2]


@pytest.mark.parametrize("rule", ["noise", "scaled"])
def test_free_start_recursion_equals_a_brute_force_transcription(rule):
    noise, times = seeded_randn(30, 2, 2), bf.uniform_grid(12)
    table = global_table(eight_gaussians(), noise, times, 4, GlobalPass(batch_size=8, start=rule),
                         progress=False)  # fmt: skip
    costs, pointers = brute_force_free_start(eight_gaussians(), noise, times, 4, rule)
    np.testing.assert_array_equal(table.pointers, pointers)
    np.testing.assert_allclose(table.costs, costs, rtol=1e-11, atol=1e-15)


# Measured (Heun teacher, 64 noises, grid 12): the free-start DP's path is the best of all (start, knots)
# grid paths in the cases at 1.0 below (and at K = 1 always: level 1 alone is exact). It keeps one state per
# (k, j), chosen by its error at j, greedy in the past: a start that is best at an inner knot need not be
# best at t = 1, so elsewhere it was worse by 5.7% (eight Gaussians, "noise", K = 2: start 7 of 12), 12.2%
# (wavy, "noise", K = 2) and 4.0% (wavy, K = 3, both rules); the factors are those figures rounded up.
FREE_BRUTE = [("eight_gaussians", "noise", 2, 1.058), ("eight_gaussians", "noise", 3, 1.0),
         ("eight_gaussians", "scaled", 2, 1.0), ("eight_gaussians", "scaled", 3, 1.0),
         ("wavy", "noise", 2, 1.122), ("wavy", "noise", 3, 1.040),
         ("wavy", "scaled", 2, 1.0), ("wavy", "scaled", 3, 1.040)]  # fmt: skip


@pytest.mark.parametrize(("flow", "rule", "steps", "factor"), FREE_BRUTE)
def test_free_start_dp_against_brute_force_over_start_and_knots(flow, rule, steps, factor):
    velocity = eight_gaussians() if flow == "eight_gaussians" else wavy
    noise = seeded_randn(64, 2 if flow == "eight_gaussians" else 3, 3)
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
    noise, times = seeded_randn(23, 3, 4), bf.uniform_grid(14)
    ref = global_table(wavy, noise, times, 5, GlobalPass(batch_size=23, start="scaled"), progress=False)
    for batch in (1, 5):
        run = GlobalPass(batch_size=batch, start="scaled")
        got = global_table(wavy, noise, times, 5, run, progress=False)
        np.testing.assert_array_equal(got.pointers, ref.pointers)
        np.testing.assert_allclose(got.costs, ref.costs, rtol=1e-13)


@pytest.mark.parametrize(("rule", "cap"), [("zero", None), ("noise", None), ("scaled", None), ("noise", 4)])
def test_counted_evaluations_are_the_closed_form(rule, cap):
    """Rows through a wrapped velocity = Heun teacher 2 (N - 1) + level 1's len(start_sources) + N - k at
    each level k >= 2, per noise; the free start adds start_extra_evaluations (cap, default N - 2)."""
    noise, times, steps = seeded_randn(10, 3, 5), bf.uniform_grid(15), 6
    n = len(times)
    velocity = CountedRows(wavy)
    global_table(velocity, noise, times, steps, GlobalPass(batch_size=4, start=rule, start_cap=cap),
                 progress=False)  # fmt: skip
    pinned = 2 * (n - 1) + 1 + sum(n - k for k in range(2, steps + 1))
    assert velocity.rows == 10 * (pinned + start_extra_evaluations(rule, n, cap))
    assert start_extra_evaluations(rule, n, cap) == {None: n - 2, 4: 4}[cap] * (rule != "zero")
    assert start_extra_evaluations("noise", 101) / 1056 < 0.1  # 99 more than 1056: 1.094x on a 100-step grid


def test_a_cap_bounds_the_start():
    noise, times = seeded_randn(16, 2, 6), bf.uniform_grid(20)
    free = global_paths(global_table(eight_gaussians(), noise, times, 3, GlobalPass(start="noise"),
                                     progress=False))  # fmt: skip
    assert max(p.indices[0] for p in free) > 3  # the cap below binds
    capped = global_table(eight_gaussians(), noise, times, 3, GlobalPass(start="noise", start_cap=3),
                          progress=False)  # fmt: skip
    assert all(p.indices[0] <= 3 for p in global_paths(capped))


@pytest.mark.parametrize("rule", ["noise", "scaled"])
def test_the_search_is_deterministic_for_a_seed_and_its_schedules_carry_the_rule(rule, tmp_path):
    settings = SearchSettings(grid=16, num_samples=12, batch_size=5, start=rule, dp="full")
    first = optimal_schedules(wavy, (3,), 4, settings, dtype=torch.float64)
    assert first == optimal_schedules(wavy, (3,), 4, settings, dtype=torch.float64)
    assert first != optimal_schedules(
        wavy,
        (3,),
        4,
        dataclasses.replace(settings, seed=1),
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


def test_a_free_start_checkpoint_is_refused_by_a_run_with_another_rule_or_cap(tmp_path):
    """(Resuming after kill -9: tests/test_engine.py, with a free start too.)"""
    noise, times = seeded_randn(11, 3, 7), bf.uniform_grid(12)
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
        run = GlobalPass(start="noise", start_cap=7)
        global_table(wavy, seeded_randn(4, 3, 0), bf.uniform_grid(5), 2, run, progress=False)
