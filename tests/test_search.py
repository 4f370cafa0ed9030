"""boss_fast.search's one entry point: SearchSettings (validated, frozen) and optimal_schedules read at K.

(cost_matrix's streaming, checkpoints and distribution: tests/test_cost.py, tests/test_distributed.py.)
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import boss_fast as bf
from boss_fast.bellman import bellman_path
from boss_fast.global_objective import GlobalPass, global_paths, global_table
from boss_fast.grids import uniform_grid
from boss_fast.search import SearchSettings, cost_matrix, optimal_schedules


def wavy(x, t):
    return torch.sin(3.0 * x) * (1.0 + t.view(-1, 1))


# Each bad value, the field the error must name, and its type.
BAD_FIELDS = [
    ({"grid": 0}, "grid", ValueError),
    ({"grid": [0.0, 0.6, 0.5, 1.0]}, "grid", ValueError),
    ({"grid": "100"}, "grid", TypeError),
    ({"grid": 100.0}, "grid", TypeError),
    ({"grid": None}, "grid", TypeError),
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
]


@pytest.mark.parametrize(("kwargs", "field", "error"), BAD_FIELDS)
def test_each_bad_field_is_refused_by_name(kwargs, field, error):
    with pytest.raises(error) as caught:
        SearchSettings(**kwargs)
    assert field in str(caught.value), str(caught.value)


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
        table = global_table(wavy, noise, grid, k, GlobalPass(batch_size=5), progress=False)
        alone = global_paths(table)[-1]
        got = optimal_schedules(
            wavy, (3,), k, dataclasses.replace(local, objective="global"), dtype=torch.float64
        )
        np.testing.assert_array_equal(got[k].indices, alone.indices)
        assert got[k].cost == alone.cost and got[k].steps == k


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
