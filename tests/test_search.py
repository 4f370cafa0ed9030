"""boss_fast.search's one entry point: SearchSettings (validated, frozen) and optimal_schedules read at K.

Below: cost_matrix's streaming, checkpoints and distribution (torch.distributed, gloo), and the search on the
fast sampler.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _helpers import brute_local_path

import boss_fast as bf
from boss_fast._checkpoint import CHECKSUM_KEY
from boss_fast.bellman import bellman_path
from boss_fast.cost import trajectory_cost
from boss_fast.global_objective import GlobalPass, global_paths, global_table
from boss_fast.grids import uniform_grid
from boss_fast.polish import polish_rows
from boss_fast.schedule import interpolate_schedule
from boss_fast.search import (
    MAX_GRID,
    SearchMemory,
    SearchSettings,
    cost_matrix,
    optimal_schedules,
    search_memory,
)
from boss_fast.trajectories import teacher_trajectory


def wavy(x, t):
    return torch.sin(3.0 * x) * (1.0 + t.view(-1, 1))


# Each bad value, the field the error must name, and its type.
BAD_FIELDS = [
    ({"grid": 0}, "grid", ValueError),
    ({"grid": [0.0, 0.6, 0.5, 1.0]}, "grid", ValueError),
    ({"grid": "100"}, "grid", TypeError),
    ({"grid": 100.0}, "grid", TypeError),
    ({"grid": None}, "grid", TypeError),
    ({"grid": 10**12}, "grid must be at most MAX_GRID = 100000", ValueError),  # was a 7.28 TiB MemoryError
    ({"grid": 100_001}, "grid must be at most MAX_GRID = 100000", ValueError),
    ({"num_samples": 0}, "num_samples", ValueError),
    ({"num_samples": "many"}, "num_samples", ValueError),
    ({"num_samples": 2.5}, "num_samples", TypeError),
    ({"num_samples": "auto", "max_samples": 8}, "max_samples", ValueError),
    ({"max_samples": 64}, "max_samples", ValueError),  # a cap of "auto" only
    ({"batch_size": 0}, "batch_size", ValueError),
    ({"batch_size": True}, "batch_size", TypeError),
    ({"seed": -1}, "seed", ValueError),
    ({"objective": "endpoint"}, "objective", ValueError),
    ({"solver": "euler_maruyama"}, "solver", ValueError),
    ({"solver": "dopri5", "mode": "eager"}, "solver", ValueError),
    ({"metric": "lpips"}, "metric", ValueError),
    ({"discount": float("nan")}, "discount", ValueError),
    ({"discount": 0.0, "objective": "local"}, "discount", ValueError),
    ({"discount": 0.9}, "discount", ValueError),  # the global objective takes 1.0
    ({"dp": "fast"}, "dp", ValueError),
    ({"dp": "coarse", "objective": "local"}, "dp", ValueError),
    ({"store": "ram"}, "store", ValueError),
    ({"store_dir": "/tmp"}, "store_dir", ValueError),  # only with store="disk"
    ({"store": "disk", "store_dir": 3}, "store_dir", TypeError),
    ({"mode": "fast"}, "mode", ValueError),
    ({"backend": "cuda"}, "backend", ValueError),
    ({"backend": "numba"}, "backend", ValueError),  # the global objective runs its own DP
    ({"start": "sigma_max"}, "start", ValueError),
    ({"start": 0.3}, "start", ValueError),
]


@pytest.mark.parametrize(("kwargs", "field", "error"), BAD_FIELDS)
def test_each_bad_field_is_refused_by_name(kwargs, field, error):
    with pytest.raises(error) as caught:
        SearchSettings(**kwargs)
    assert field in str(caught.value), str(caught.value)


def test_the_grid_cap_is_the_largest_grid_taken():
    assert SearchSettings(grid=MAX_GRID).grid == MAX_GRID  # nothing allocated at construction
    with pytest.raises(ValueError, match="got 100002 times"):
        SearchSettings(grid=np.linspace(0.0, 1.0, MAX_GRID + 2))


def _unwritable_dir(tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits; a read-only filesystem stops it
        for candidate in ("/sys", "/proc"):
            try:
                with tempfile.TemporaryFile(dir=candidate):
                    pass
            except OSError:
                return candidate
        pytest.skip("no unwritable directory for root here")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return str(locked)


@pytest.mark.parametrize("case", ["missing", "a file", "unwritable"])
def test_a_disk_store_dir_that_cannot_hold_the_rows_is_refused_at_construction(tmp_path, case):
    """store="disk" with a missing, file or unwritable store_dir was accepted and failed at the search's first
    write with FileNotFoundError on an internal name; now the settings refuse it, naming the field."""
    (tmp_path / "afile").write_text("x")
    store_dir = {
        "missing": str(tmp_path / "missing"),
        "a file": str(tmp_path / "afile"),
        "unwritable": _unwritable_dir(tmp_path),
    }[case]
    fragment = {"missing": "does not exist", "a file": "is a file", "unwritable": "cannot write in it"}[case]
    with pytest.raises(ValueError, match=f"store_dir .* {fragment}"):
        SearchSettings(store="disk", store_dir=store_dir)
    assert SearchSettings(store="disk", store_dir=tmp_path).store_dir == tmp_path
    assert os.listdir(tmp_path) == ["afile"]  # the write test leaves nothing


def test_a_shape_given_as_an_int_is_refused_by_name():
    """optimal_schedules(flow, 2, 2) said "'int' object is not iterable"."""
    with pytest.raises(TypeError, match=r"shape must be a sequence of integers .*e\.g\. \(2,\).*got 2"):
        optimal_schedules(wavy, 2, 2, SearchSettings(grid=10, num_samples=4))
    with pytest.raises(ValueError, match="shape must have 1 to 16 entries"):
        optimal_schedules(wavy, (1,) * 17, 2, SearchSettings(grid=10, num_samples=4))


def test_settings_are_frozen_and_hold_a_checked_grid():
    settings = SearchSettings(grid=np.array([0.0, 0.25, 1.0]), num_samples=8)
    assert settings.grid == (0.0, 0.25, 1.0) and isinstance(settings.grid, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.num_samples = 9
    assert dataclasses.replace(settings, num_samples=9).num_samples == 9
    with pytest.raises(ValueError, match="batch_size"):
        dataclasses.replace(settings, batch_size=0)  # replace validates again
    assert SearchSettings().teacher == "heun" and SearchSettings(objective="local").teacher == "euler"
    assert SearchSettings(solver="rk4").teacher == "rk4" and hash(settings) == hash(
        dataclasses.replace(settings)
    )
    with pytest.raises(TypeError, match="settings must be a SearchSettings"):
        optimal_schedules(wavy, (3,), 2, {"grid": 10})


@pytest.mark.parametrize("objective", ["global", "local"])
@pytest.mark.parametrize("rule", ["zero", "noise", "scaled"])
def test_the_start_rule_travels_with_the_schedules(objective, rule):
    settings = SearchSettings(grid=10, num_samples=8, objective=objective, start=rule)
    assert settings.start_rule == rule
    found = optimal_schedules(wavy, (3,), 3, settings)
    assert {s.start for s in found.values()} == {rule}
    assert SearchSettings().start is None and SearchSettings().start_rule == "noise"
    assert SearchSettings(objective="local").start_rule == "zero"  # BOSS as published: one setting away


def test_reading_one_budget_is_the_single_budget_dp():
    """optimal_schedules(..., K)[K] is what the DP of budget K alone returns on the same noises: the local
    objective's Bellman path on the search's cost matrix, the global objective's table of K levels."""
    noise = bf.seeded_noise((3,), 0, 12, seed=2, dtype=torch.float64)
    grid = bf.uniform_grid(16)
    local = SearchSettings(grid=16, num_samples=12, batch_size=5, seed=2, objective="local")
    cost = bf.cost_matrix(wavy, noise, grid, batch_size=5, progress=False)
    for k in (2, 5):
        got = optimal_schedules(wavy, (3,), k, local, dtype=torch.float64)[k]
        one = bellman_path(cost, k)
        np.testing.assert_array_equal(got.indices, one.indices)
        assert got.cost == one.cost  # same matrix (same batches), same DP: the same float64 sum
        table = global_table(wavy, noise, grid, k, GlobalPass(batch_size=5, start="noise"), progress=False)
        alone = global_paths(table)[-1]
        plain = dataclasses.replace(local, objective="global", polish="none", dp="full")
        got = optimal_schedules(wavy, (3,), k, plain, dtype=torch.float64)
        np.testing.assert_array_equal(got[k].indices, alone.indices)
        assert got[k].cost == alone.cost and got[k].steps == k
    # the default polish of budget k depends on its own path and the same noises only
    polished = dataclasses.replace(local, objective="global", start=None)
    wide = optimal_schedules(wavy, (3,), 5, polished, dtype=torch.float64)
    narrow = optimal_schedules(wavy, (3,), 2, polished, dtype=torch.float64)
    np.testing.assert_array_equal(wide[2].indices, narrow[2].indices)
    assert wide[2].cost == narrow[2].cost


# From test_distributed.py: cost_matrix and optimal_schedules under torch.distributed (gloo, 2 CPU
# processes) match one process.

WORLD = 2
# 19 samples in batches of 4: 5 batches, so rank 0 runs 3 (4 + 4 + 3 samples) and rank 1 runs 2 (4 + 4).
NUM_SAMPLES, BATCH = 19, 4


def velocity(x, t):
    return torch.sin(3.0 * x) * (1.0 + t.view(-1, 1))


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        noise = torch.randn(NUM_SAMPLES, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        cost = cost_matrix(
            velocity,
            noise,
            uniform_grid(16),
            batch_size=BATCH,
            metric="l2",
            progress=False,
            checkpoint=os.path.join(out_dir, "cost.npz"),
            checkpoint_key="f",
        )
        sched = optimal_schedules(
            velocity,
            (3,),
            4,
            SearchSettings(grid=16, num_samples=NUM_SAMPLES, batch_size=BATCH, objective="local"),
        )[4]
        np.save(os.path.join(out_dir, f"cost{rank}.npy"), cost)
        np.save(os.path.join(out_dir, f"indices{rank}.npy"), sched.indices)
        np.save(os.path.join(out_dir, f"schedcost{rank}.npy"), np.float64(sched.cost))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_reduce_to_the_single_process_result(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)

    noise = torch.randn(NUM_SAMPLES, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    single = cost_matrix(velocity, noise, uniform_grid(16), batch_size=BATCH, metric="l2", progress=False)
    sched = optimal_schedules(
        velocity,
        (3,),
        4,
        SearchSettings(grid=16, num_samples=NUM_SAMPLES, batch_size=BATCH, objective="local"),
    )[4]

    costs = [np.load(tmp_path / f"cost{r}.npy") for r in range(WORLD)]
    np.testing.assert_array_equal(costs[0], costs[1])  # every rank returns the same matrix
    # Same batches, summed in another order: float64 rounding only.
    np.testing.assert_allclose(costs[0], single, rtol=1e-13, atol=0)
    for r in range(WORLD):
        np.testing.assert_array_equal(np.load(tmp_path / f"indices{r}.npy"), sched.indices)
        assert float(np.load(tmp_path / f"schedcost{r}.npy")) == pytest.approx(sched.cost, rel=1e-12)
    # each rank checkpointed its own share
    for r, (batches, count) in enumerate([(3, 11), (2, 8)]):
        with np.load(tmp_path / f"cost.rank{r}-of-{WORLD}.npz") as stored:
            assert int(stored["batches_done"]) == batches and int(stored["count"]) == count
            assert int(stored["rank"]) == r and int(stored["world_size"]) == WORLD


# From test_cost.py


def nonlinear_velocity(x, t):
    return torch.sin(3.0 * x) * (1.0 + t.view(-1, *([1] * (x.ndim - 1))))


class Recorder:
    """A velocity that records batch sizes and can die at a given call (a simulated kill)."""

    def __init__(self, fn=nonlinear_velocity, die_at_call=None):
        self.fn, self.die_at_call, self.batches = fn, die_at_call, []

    def __call__(self, x, t):
        if self.die_at_call is not None and len(self.batches) == self.die_at_call:
            raise RuntimeError("simulated kill")
        self.batches.append(x.shape[0])
        return self.fn(x, t)


@pytest.fixture
def setup():
    noise = torch.randn(23, 2, 3, generator=torch.Generator().manual_seed(6))
    return noise, uniform_grid(12)


@pytest.mark.parametrize("metric", ["l2sq", "l2"])
def test_cost_matrix_equals_one_big_batch(setup, metric):
    noise, times = setup
    traj = teacher_trajectory(nonlinear_velocity, noise, times)
    expected = trajectory_cost(traj.states, traj.velocities, times, metric)
    recorder = Recorder()
    actual = cost_matrix(recorder, noise, times, batch_size=5, metric=metric, progress=False)
    # The teacher is run per batch of 5 (memory: one batch's trajectory) and the sums reduce in float64.
    assert set(recorder.batches) == {5, 3} and sum(recorder.batches) == 23 * 12
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=0)


def test_cost_matrix_options(setup):
    noise, times = setup
    base = cost_matrix(nonlinear_velocity, noise, times, batch_size=256, progress=False)
    shown = cost_matrix(nonlinear_velocity, noise, times, batch_size=256, progress=True, device="cpu")
    np.testing.assert_array_equal(base, shown)
    heun = cost_matrix(nonlinear_velocity, noise, times, solver="heun", progress=False)
    assert np.all(np.diag(heun, 1) > 0) and not np.array_equal(heun, base)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
        ({"solver": "ddim"}, ValueError, "unknown solver"),
        ({"metric": "l1"}, ValueError, "unknown metric"),
        ({"noise": torch.zeros(3, 2, dtype=torch.int64)}, TypeError, "floating-point"),
        ({"grid": [0.0]}, ValueError, "at least 2"),
    ],
)
def test_cost_matrix_bad_input(setup, kwargs, error, match):
    noise, times = setup
    args = {"noise": noise, "grid": times, "progress": False}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        cost_matrix(nonlinear_velocity, **args)


def test_checkpoint_resume_equals_uninterrupted_run_exactly(setup, tmp_path):
    noise, times = setup
    path = tmp_path / "cost.npz"
    uninterrupted = cost_matrix(nonlinear_velocity, noise, times, batch_size=5, progress=False)
    steps = len(times) - 1
    with pytest.raises(RuntimeError, match="simulated kill"):  # dies on the 3rd batch's first call
        cost_matrix(
            Recorder(die_at_call=2 * steps),
            noise,
            times,
            batch_size=5,
            progress=False,
            checkpoint=path,
            checkpoint_key="f",
        )
    assert os.listdir(tmp_path) == ["cost.npz"]  # atomic writes leave no temporary behind
    with np.load(path) as stored:
        assert int(stored["batches_done"]) == 2 and int(stored["count"]) == 10
    recorder = Recorder()
    resumed = cost_matrix(
        recorder, noise, times, batch_size=5, progress=False, checkpoint=path, checkpoint_key="f"
    )
    assert sum(recorder.batches) == (23 - 10) * steps  # only the 3 missing batches ran
    np.testing.assert_array_equal(resumed, uninterrupted)
    again = Recorder()  # a finished checkpoint answers at once
    np.testing.assert_array_equal(
        cost_matrix(again, noise, times, batch_size=5, checkpoint=path, checkpoint_key="f"), resumed
    )
    assert again.batches == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"grid": uniform_grid(11)}, "times"),  # the header keeps its key "times"
        ({"metric": "l2"}, "metric"),
        ({"solver": "heun"}, "solver"),
        ({"batch_size": 4}, "batch_size"),
        ({"noise_slice": slice(0, 22)}, "num_samples"),
        ({"noise_scale": 2.0}, "noise"),
    ],
)
def test_checkpoint_of_another_run_is_refused(setup, tmp_path, change, field):
    noise, times = setup
    path = tmp_path / "cost.npz"
    cost_matrix(
        nonlinear_velocity, noise, times, batch_size=5, progress=False, checkpoint=path, checkpoint_key="f"
    )
    args = {"noise": noise, "grid": times, "batch_size": 5, "metric": "l2sq", "solver": "euler"}
    args["noise"] = noise[change.pop("noise_slice", slice(None))] * change.pop("noise_scale", 1.0)
    args.update(change)
    with pytest.raises(ValueError, match=f"different run: {field} ="):
        cost_matrix(nonlinear_velocity, progress=False, checkpoint=path, checkpoint_key="f", **args)


def test_checkpoint_of_another_model_is_refused(setup, tmp_path):
    noise, times = setup
    net = torch.nn.Linear(3, 3)
    path = tmp_path / "cost.npz"
    cost_matrix(lambda x, t: net(x), noise, times, progress=False)  # a plain callable: no fingerprint

    class Velocity(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(3, 3)

        def forward(self, x, t):
            return self.net(x)

    model = Velocity()
    cost_matrix(model, noise, times, progress=False, checkpoint=path)
    with torch.no_grad():
        model.net.bias += 1.0
    with pytest.raises(ValueError, match="different run: model ="):
        cost_matrix(model, noise, times, progress=False, checkpoint=path)


def test_corrupted_or_foreign_checkpoint_is_refused(setup, tmp_path):
    noise, times = setup
    path = tmp_path / "cost.npz"
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="unreadable"):
        cost_matrix(nonlinear_velocity, noise, times, progress=False, checkpoint=path, checkpoint_key="f")
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a boss_fast cost checkpoint"):
        cost_matrix(nonlinear_velocity, noise, times, progress=False, checkpoint=path, checkpoint_key="f")


def test_a_plain_function_needs_a_checkpoint_key_and_another_key_is_refused(setup, tmp_path):
    noise, times = setup
    path = tmp_path / "cost.npz"

    def other(x, t):
        return nonlinear_velocity(x, t) * 2.0

    with pytest.raises(ValueError, match="checkpoint_key="):
        cost_matrix(nonlinear_velocity, noise, times, progress=False, checkpoint=path)
    assert not path.exists()
    cost_matrix(nonlinear_velocity, noise, times, progress=False, checkpoint=path, checkpoint_key="f1")
    with pytest.raises(ValueError, match="different run: model ="):
        cost_matrix(other, noise, times, progress=False, checkpoint=path, checkpoint_key="f2")
    with pytest.raises(ValueError, match="checkpoint_key="):
        bf.optimal_schedules(
            other, (3,), 2, bf.SearchSettings(grid=8, num_samples=4), checkpoint=tmp_path / "s.npz"
        )


def test_a_module_configured_by_a_plain_attribute_gets_another_fingerprint(setup, tmp_path):
    noise, times = setup

    class Scaled(torch.nn.Module):
        def __init__(self, scale: float):
            super().__init__()
            self.scale = scale

        def forward(self, x, t):
            return nonlinear_velocity(x, t) * self.scale

    path = tmp_path / "cost.npz"
    cost_matrix(Scaled(1.0), noise, times, progress=False, checkpoint=path)
    with pytest.raises(ValueError, match="different run: model ="):
        cost_matrix(Scaled(2.0), noise, times, progress=False, checkpoint=path)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("count", 0),
        ("batches_done", -1),
        ("batches_done", 99),
        ("count", 7),
        ("sums", np.nan),
        ("sums", -1.0),
    ],
)
def test_a_checkpoint_with_edited_counters_is_refused(setup, tmp_path, field, value):
    """An edit that breaks the counters: refused by the checksum, and without one (a file written before the
    checksum existed) by the counters' own checks."""
    noise, times = setup
    path = tmp_path / "cost.npz"
    args = {"batch_size": 5, "progress": False, "checkpoint": path, "checkpoint_key": "f"}
    cost_matrix(nonlinear_velocity, noise, times, **args)
    stored = _stored(path)
    if field == "sums":
        stored["sums"][0, 1] = value
    else:
        stored[field] = np.int64(value)
    np.savez(path, **stored)
    with pytest.raises(ValueError, match=r"cost\.npz fails its checksum"):
        cost_matrix(nonlinear_velocity, noise, times, **args)
    del stored[CHECKSUM_KEY]
    np.savez(path, **stored)
    with pytest.raises(ValueError, match=rf"cost\.npz: {field} "):
        cost_matrix(nonlinear_velocity, noise, times, **args)


def _stored(path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key].copy() for key in data.files}


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.update(
            sums=s["sums"] * 2
        ),  # plausible counters: only the checksum sees it (failed on main)
        lambda s: s.update(batches_done=np.int64(1), count=np.int64(5)),  # one batch forgotten
        lambda s: s.update(extra=np.zeros(2)),  # an array added
        lambda s: s.update(payload_sha256=np.asarray(123)),  # the checksum itself of another type
    ],
)
def test_a_checkpoint_whose_arrays_differ_from_its_checksum_is_refused(setup, tmp_path, edit):
    noise, times = setup
    path = tmp_path / "cost.npz"
    args = {"batch_size": 5, "progress": False, "checkpoint": path, "checkpoint_key": "f"}
    want = cost_matrix(nonlinear_velocity, noise, times, **args)
    assert np.array_equal(cost_matrix(nonlinear_velocity, noise, times, **args), want)  # an intact file loads
    stored = _stored(path)
    edit(stored)
    np.savez(path, **stored)
    with pytest.raises(ValueError, match=r"cost checkpoint .*cost\.npz fails its checksum \(payload_sha256"):
        cost_matrix(nonlinear_velocity, noise, times, **args)


def test_a_checkpoint_missing_a_field_or_of_another_dtype_names_it(setup, tmp_path):
    """Files without a checksum (as written before it existed) still get every field checked by name."""
    noise, times = setup
    path = tmp_path / "cost.npz"
    args = {"batch_size": 5, "progress": False, "checkpoint": path, "checkpoint_key": "f"}
    cost_matrix(nonlinear_velocity, noise, times, **args)
    good = _stored(path)
    del good[CHECKSUM_KEY]
    cases = [
        (
            {k: v for k, v in good.items() if k != "sums"},
            "lacks 'sums' \\(a float64 array of shape \\(13, 13\\)",
        ),
        ({**good, "sums": good["sums"].astype(np.float32)}, "'sums' of dtype float32, expected float64"),
        ({**good, "sums": good["sums"][:3]}, "'sums' of shape \\(3, 13\\), expected \\(13, 13\\)"),
        ({k: v for k, v in good.items() if k != "count"}, "lacks 'count'"),
        ({**good, "batches_done": np.float64(2.0)}, "'batches_done' of dtype float64, shape \\(\\): not an"),
    ]
    for stored, match in cases:
        np.savez(path, **stored)
        with pytest.raises(ValueError, match=match):
            cost_matrix(nonlinear_velocity, noise, times, **args)
    np.savez(path, **good)  # the file as an older version wrote it: resumed as it was
    assert np.array_equal(
        cost_matrix(nonlinear_velocity, noise, times, **args),
        cost_matrix(nonlinear_velocity, noise, times, batch_size=5, progress=False),
    )


# From test_sampler.py


def test_cost_matrix_and_schedule_search_on_the_sampler(digits_dit, tmp_path):
    """The teacher on a recording sampler (one per batch shape: batches of 4, 4 and 2) gives the plain
    loop's matrix bit for bit in eager mode, and the same schedule."""
    noise = torch.randn(10, 1, 8, 8)
    grid = np.linspace(0.0, 1.0, 9)
    want = bf.cost_matrix(digits_dit, noise, grid, batch_size=4, progress=False)
    got = bf.cost_matrix(digits_dit, noise, grid, batch_size=4, progress=False, mode="eager")
    np.testing.assert_array_equal(got, want)
    settings = bf.SearchSettings(grid=8, num_samples=6, batch_size=4, solver="heun", objective="local")
    plain = bf.optimal_schedules(digits_dit, (1, 8, 8), 3, settings)
    assert bf.optimal_schedules(digits_dit, (1, 8, 8), 3, replace(settings, mode="eager")) == plain


# Refusals: nothing silently wrong (from the former tests/test_refusals.py)


def test_the_unnamed_errors_name_the_argument():
    with pytest.raises(TypeError, match="sched must be a Schedule"):
        interpolate_schedule([0.0, 0.5, 1.0], 4)
    with pytest.raises(TypeError, match="dtype must be a torch.dtype such as torch.float64, got 'float64'"):
        bf.optimal_schedules(
            lambda x, t: -x, (2,), 2, bf.SearchSettings(grid=10, num_samples=4), dtype="float64"
        )
    with pytest.raises(
        ValueError, match=r"noise must hold at least one value per sample, got shape \(4, 0\)"
    ):
        bf.cost_matrix(lambda x, t: -x, torch.randn(4, 0), [0.0, 0.5, 1.0], progress=False)


# ----------------------------------------------------------------- the local objective with a free start


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
        total, indices = brute_local_path(cost, e0, k, 1.0)
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


# ------------------------------------------------------------------------------- the bill before the work


class Counting:
    """A velocity that counts its calls by width (rows per call) and the rows in all."""

    def __init__(self, fn=wavy):
        self.fn, self.widths = fn, {}

    def __call__(self, x, t):
        self.widths[x.shape[0]] = self.widths.get(x.shape[0], 0) + 1
        return self.fn(x, t)

    @property
    def rows(self):
        return sum(w * n for w, n in self.widths.items())


# (settings, K): each objective, every fixed-step teacher, batches that do not divide the noises, fewer noises
# than a batch (the teacher's calls narrower than the DP's), K up to N - 1.
COUNTED = [
    (dict(objective="local", solver="euler"), 4),
    (dict(objective="local", solver="heun"), 4),
    (dict(objective="local", solver="rk4", num_samples=3), 2),
    (dict(solver="euler"), 4),
    (dict(solver="heun"), 1),
    (dict(solver="rk4", batch_size=16), 3),
    (dict(solver="heun", num_samples=5, batch_size=8), 11),
    (dict(solver="heun", mode="eager"), 4),
]


@pytest.mark.parametrize(("kwargs", "k"), COUNTED)
def test_the_bill_counts_every_model_call_the_search_makes(kwargs, k):
    polish = {"polish": "none", "dp": "full"} if kwargs.get("objective", "global") == "global" else {}
    settings = SearchSettings(**{"grid": 11, "num_samples": 13, "batch_size": 4, **polish, **kwargs})
    counter, timed = Counting(), Counting()
    optimal_schedules(counter, (3,), k, settings)
    bill = bf.search_bill(timed, (3,), k, settings)
    # the bill's only calls: the warm-up and the timed ones
    assert timed.widths == {settings.batch_size: bf.search.WARM_UP_CALLS + bf.search.TIMED_CALLS}
    assert bill.exact and bill.evaluations == counter.rows
    assert dict(bill.calls) == counter.widths
    assert bill.per_noise == bill.evaluations / settings.num_samples


def test_the_default_bill_is_the_issue_figure():
    """1056 evaluations per noise for the search pinned at t = 0 (Heun teacher 200 + the full DP's 856) at
    K = 10, the figure of issue 29; the default's free start adds its 99 other start points (1155)."""
    full = SearchSettings(num_samples=8, batch_size=8, dp="full")
    pinned = bf.search_bill(wavy, (3,), 10, dataclasses.replace(full, start="zero"))
    assert (pinned.evaluations, pinned.per_noise, pinned.exact) == (8 * 1056, 1056.0, True)
    bill = bf.search_bill(wavy, (3,), 10, dataclasses.replace(full, polish="none"))
    assert (bill.evaluations, bill.per_noise, bill.exact) == (8 * 1155, 1155.0, True)


@pytest.mark.parametrize("dp", ["full", "coarse"])
def test_the_polish_bill_bounds_what_the_polished_search_makes(dp, monkeypatch):
    monkeypatch.setattr("boss_fast.polish.MIN_PROBED", 1)  # half of 9 noises (the floor is 128)
    settings = SearchSettings(grid=30, num_samples=9, batch_size=4, dp=dp)
    assert settings.polish_knots == "start"
    counter = Counting()
    optimal_schedules(counter, (3,), 4, settings)
    plain = Counting()
    optimal_schedules(plain, (3,), 4, dataclasses.replace(settings, polish="none"))
    bill = bf.search_bill(wavy, (3,), 4, settings)
    plain_bill = bf.search_bill(wavy, (3,), 4, dataclasses.replace(settings, polish="none"))
    # K = 1, 2 probed on all 9 noises (7K each); K = 3, 4 on the first 5 (7K each), checked on the other 4 (K)
    rows = sum(polish_rows(k, "start", pinned=False, num_samples=9) for k in range(1, 5))
    assert rows == 7 * (1 + 2) * 9 + 7 * (3 + 4) * 5 + (3 + 4) * 4
    assert not bill.exact and "at most" in bill.lines()[0]
    assert plain.rows < counter.rows <= bill.evaluations == plain_bill.evaluations + rows
    # the polish's calls: K = 1, 2 on each batch (4, 4 and 1 rows), K = 3, 4 on the probed noises' batches
    # (4 and 1) and the rest's part of each batch (3 and 1)
    polish_calls = {w: n - dict(plain_bill.calls).get(w, 0) for w, n in bill.calls}
    polish_calls = {w: n for w, n in polish_calls.items() if n}
    assert polish_calls == {4: 2 * 21 + 49, 1: 21 + 49 + 7, 3: 7}
    made = {w: n - plain.widths.get(w, 0) for w, n in counter.widths.items()}
    assert {w for w, n in made.items() if n} <= {4, 3, 1}
    assert all(made.get(w, 0) <= n for w, n in polish_calls.items())


@pytest.mark.parametrize("k", [2, 5])
def test_the_coarse_bill_bounds_what_the_coarse_search_makes(k):
    settings = SearchSettings(grid=40, num_samples=9, batch_size=4, dp="coarse", polish="none")
    counter = Counting()
    optimal_schedules(counter, (3,), k, settings)
    bill = bf.search_bill(wavy, (3,), k, settings)
    assert not bill.exact
    # the coarse pass and both teachers are counted exactly; only the fine windows' overlap is not known
    # before the coarse pass: at K = 2 the one window (5 points) is the bound itself
    assert bill.evaluations >= counter.rows if k > 2 else bill.evaluations == counter.rows
    assert bill.evaluations - counter.rows <= 9 * sum(range(k - 1)) * 5


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4"])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_teacher_evaluations_count_the_dense_teachers_calls(solver, stride):
    from boss_fast.trajectories import DenseTeacher, teacher_evaluations

    counter = Counting()
    grid = uniform_grid(10)  # 11 points: stride 3 ends on a shorter last step
    DenseTeacher(counter, grid, solver, None, stride)(torch.zeros(2, 3))
    assert counter.widths == {2: teacher_evaluations(len(grid), solver, stride)}


def test_a_dopri5_bill_says_its_count_is_unknown():
    pytest.importorskip("torchdiffeq")
    bill = bf.search_bill(wavy, (3,), 2, SearchSettings(grid=10, num_samples=4, solver="dopri5"))
    assert bill.evaluations is None and bill.seconds is None and bill.per_noise is None
    assert any("unknown (the dopri5 teacher is adaptive)" in line for line in bill.lines())


def test_the_memory_law_is_one_function():
    """search_memory against the law's table written out by hand (N = 101, M_r = 64, B = 8, D = 1024, 4 B)."""
    n, m, b, d, s = 101, 64, 8, 1024, 4
    law = {
        "device": ((3 * n - 1) * m * d * s + n * b * d * s, 0, 0),
        "host": (3 * n * b * d * s, (3 * n - 1) * m * d * s, 0),
        "disk": (3 * n * b * d * s, 0, (3 * n - 1) * m * d * s),
    }
    for store, want in law.items():
        got = search_memory("global", store, n, m, b, d, s)
        assert (got.device, got.host, got.disk) == want
    assert search_memory("local", "disk", n, m, b, d, s) == SearchMemory(2 * n * b * d * s, 0, 0)
    assert search_memory("global", "device", n, 3, b, d, s).device == (3 * n - 1 + n) * 3 * d * s  # B = M


def test_the_bill_memory_is_the_law_of_its_store():
    settings = SearchSettings(grid=20, num_samples=10, batch_size=4, store="host")
    bill = bf.search_bill(nonlinear_velocity, (2, 3), 3, settings)
    assert bill.memory == search_memory("global", "host", 21, 10, 4, 6, 4)
    assert bill.seconds >= 0 and bill.call_seconds > 0 and bill.refusal is None
    assert any(line.startswith("projected wall time") for line in bill.lines())


def test_a_store_that_does_not_fit_is_refused_before_any_model_call(monkeypatch):
    import boss_fast.search as search

    settings = SearchSettings(grid=20, num_samples=10, batch_size=4)
    need = search.search_memory("global", "device", 21, 10, 4, 3, 4).device
    monkeypatch.setattr(search, "_free", lambda device, folder: (need - 1, need - 1, 10 * need))
    counter = Counting()
    with pytest.raises(ValueError, match="store='device' needs .* more than the .* free; store='disk' fits"):
        optimal_schedules(counter, (3,), 2, settings)
    assert counter.widths == {}  # refused before the teacher's first call
    # the bill says the same, and the disk store goes through
    assert "store='disk' fits" in bf.search_bill(wavy, (3,), 2, settings).refusal
    optimal_schedules(counter, (3,), 2, replace(settings, store="disk"))
    monkeypatch.setattr(search, "_free", lambda device, folder: (1, 1, 1))
    with pytest.raises(ValueError, match="no store fits"):
        optimal_schedules(counter, (3,), 2, settings)


def test_on_cuda_the_refusal_names_the_host_store_when_it_fits():
    from boss_fast.search import _refusal

    gib = 2**30
    memories = {"device": SearchMemory(20 * gib, 0, 0), "host": SearchMemory(2 * gib, 18 * gib, 0),
                "disk": SearchMemory(2 * gib, 0, 18 * gib)}  # fmt: skip
    text = _refusal(memories, "device", (10 * gib, 64 * gib, None), torch.device("cuda", 0))
    assert "needs 20.00 GiB of device memory on cuda:0" in text and "10.00 GiB free" in text
    assert "store='host' fits" in text
    assert "store='disk' fits" in _refusal(
        memories, "device", (10 * gib, 8 * gib, None), torch.device("cuda")
    )
    assert _refusal(memories, "host", (10 * gib, 64 * gib, None), torch.device("cuda")) is None


# ------------------------------------------------------------------------------ reduced-precision model calls


class Precision:
    """A velocity that records, per call, the dtype it was given and whether autocast was on."""

    def __init__(self):
        self.net = torch.nn.Linear(3, 3).requires_grad_(False)
        self.seen = set()

    def __call__(self, x, t):
        self.seen.add((x.dtype, torch.is_autocast_enabled(x.device.type), torch.get_autocast_dtype("cpu")))
        return self.net(x) * (1.0 + t.view(-1, 1))


@pytest.mark.parametrize(
    ("value", "error"), [(torch.float32, ValueError), (torch.float64, ValueError), ("bfloat16", TypeError)]
)
def test_an_unknown_autocast_dtype_is_refused_by_name(value, error):
    with pytest.raises(error, match="autocast must be None, torch.bfloat16 or torch.float16"):
        SearchSettings(autocast=value)


def test_autocast_with_what_cannot_work_is_refused_by_name():
    with pytest.raises(ValueError, match="autocast=torch.bfloat16 with solver='dopri5'"):
        SearchSettings(autocast=torch.bfloat16, solver="dopri5")
    settings = SearchSettings(grid=10, num_samples=4, autocast=torch.bfloat16)
    with pytest.raises(ValueError, match="dtype=torch.float16 would put the states there too"):
        optimal_schedules(wavy, (3,), 2, settings, dtype=torch.float16)
    # float64 states: autocast would leave the model in float64
    with pytest.raises(ValueError, match="needs float32 states.*dtype=torch.float64"):
        optimal_schedules(wavy, (3,), 2, settings, dtype=torch.float64)
    for model in (torch.nn.Linear(3, 3).double(), bf.models.load_bundled("gmm2d")):  # parameters, buffers
        with pytest.raises(ValueError, match="needs float32 states.*the model holds float64 tensors"):
            optimal_schedules(model, model_shape(model), 2, settings, dtype=torch.float32)


def model_shape(model):
    return (3,) if isinstance(model, torch.nn.Linear) else (2,)


@pytest.mark.parametrize("objective", ["global", "local"])
def test_autocast_runs_the_model_in_bf16_and_the_states_in_float32(objective):
    model = Precision()
    settings = SearchSettings(
        grid=12, num_samples=6, batch_size=4, objective=objective, autocast=torch.bfloat16
    )
    first = optimal_schedules(model, (3,), 3, settings)
    assert model.seen == {(torch.float32, True, torch.bfloat16)}  # float32 states in, bf16 matmuls inside
    again = optimal_schedules(model, (3,), 3, settings)  # deterministic for a seed
    plain = optimal_schedules(model, (3,), 3, replace(settings, autocast=None))
    for k in (1, 2, 3):
        np.testing.assert_array_equal(first[k].indices, again[k].indices)
        assert first[k].cost == again[k].cost
    assert first[3].cost != plain[3].cost  # the bf16 model's errors are not the float32 model's


def test_a_bf16_model_searches_with_float32_states_under_autocast():
    model = Precision()
    model.net = model.net.to(torch.bfloat16)  # the model's own dtype would make the states bf16
    sset = optimal_schedules(model, (3,), 2, SearchSettings(grid=8, num_samples=4, autocast=torch.bfloat16))
    assert {dtype for dtype, _, _ in model.seen} == {torch.float32} and sset[2].steps == 2


def test_a_bf16_search_does_not_resume_a_float32_checkpoint_and_resumes_its_own(tmp_path):
    settings = SearchSettings(grid=10, num_samples=9, batch_size=4)
    path = tmp_path / "search.npz"
    optimal_schedules(wavy, (3,), 3, settings, checkpoint=path, checkpoint_key="wavy")
    bf16 = replace(settings, autocast=torch.bfloat16)
    with pytest.raises(ValueError, match="different run: autocast = 'None' there, 'torch.bfloat16' here"):
        optimal_schedules(wavy, (3,), 3, bf16, checkpoint=path, checkpoint_key="wavy")
    # killed during level 3 (a simulated kill at the model call), then resumed: the uninterrupted run's bits
    uninterrupted = optimal_schedules(wavy, (3,), 3, bf16)
    own = tmp_path / "bf16.npz"
    dying = Recorder(fn=wavy, die_at_call=3 * 9 * 2 + 40)
    with pytest.raises(RuntimeError, match="simulated kill"):
        optimal_schedules(dying, (3,), 3, bf16, checkpoint=own, checkpoint_key="wavy")
    with np.load(own) as stored:
        assert 1 <= int(stored["levels_done"]) < 3
    resumed = optimal_schedules(wavy, (3,), 3, bf16, checkpoint=own, checkpoint_key="wavy")
    for k in (1, 2, 3):
        np.testing.assert_array_equal(resumed[k].indices, uninterrupted[k].indices)
        assert resumed[k].cost == uninterrupted[k].cost
