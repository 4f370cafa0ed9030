"""boss_fast.search's one entry point: SearchSettings (validated, frozen) and optimal_schedules read at K.

(cost_matrix's streaming, checkpoints and distribution: tests/test_cost.py, tests/test_distributed.py.)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import boss_fast as bf
from boss_fast.bellman import bellman_path
from boss_fast.global_objective import GlobalPass, global_paths, global_table
from boss_fast.search import SearchSettings, optimal_schedules


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
