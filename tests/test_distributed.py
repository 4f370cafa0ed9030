"""cost_matrix and optimal_schedules under torch.distributed (gloo, 2 CPU processes) match one process."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from boss_fast.grids import uniform_grid
from boss_fast.search import SearchSettings, cost_matrix, optimal_schedules

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
