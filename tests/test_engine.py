"""The streaming engine (boss_fast.engine) under the searches: stores, wide calls, modes, ranks, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file

import boss_fast as bf
from boss_fast.engine import ROWS_PREFIX, RowStore, Shard, WideEvaluator, checkpoint_rows, resolve_wide_mode
from boss_fast.global_objective import GlobalPass, accumulate_global, global_table
from boss_fast.search import SearchSettings, optimal_schedules
from boss_fast.straighten import straightening_pairs
from boss_fast.trajectories import seeded_noise


def wavy(x, t):
    return torch.sin(3.0 * x) * (1.0 + t.view(-1, 1))


class Recorder:
    """A velocity that records the width of every call (and the rows a bank would pair with)."""

    def __init__(self, velocity=wavy):
        self.velocity, self.widths, self.rows = velocity, [], []

    def __call__(self, x, t):
        self.widths.append(x.shape[0])
        return self.velocity(x, t)


def _table(store, batch_size, tmp_path=None, **kw):
    noise = torch.randn(23, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    run = GlobalPass(
        batch_size=batch_size, store=store, store_dir=tmp_path if store == "disk" else None, **kw
    )
    return global_table(wavy, noise, bf.uniform_grid(14), 6, run, progress=False)


# ------------------------------------------------------------------------------------------------ stores


@pytest.mark.parametrize("batch_size", [1, 4, 23, 64])
def test_every_store_gives_the_same_bits(tmp_path, batch_size):
    ref = _table("device", batch_size)
    for store in ("host", "disk"):
        got = _table(store, batch_size, tmp_path)
        np.testing.assert_array_equal(got.pointers, ref.pointers)
        np.testing.assert_array_equal(got.costs, ref.costs)
    assert os.listdir(tmp_path) == []  # the disk store's files are gone


def test_batch_size_changes_only_the_summation_order():
    ref = _table("disk", 23)
    for batch_size in (1, 5, 200):
        got = _table("disk", batch_size)
        np.testing.assert_array_equal(got.pointers, ref.pointers)
        np.testing.assert_allclose(got.costs, ref.costs, rtol=1e-13)


def test_row_store_keeps_rows_between_loads(tmp_path):
    for kind in ("device", "host", "disk"):
        with RowStore(
            kind, {"a": 2, "b": 3}, (4,), [3, 2], torch.float32, torch.device("cpu"), tmp_path
        ) as s:
            for i, fill in ((0, 1.0), (1, 2.0)):
                block = s.load("b", i)
                block.fill_(fill)
                s.save("b", i, block)
            assert [float(s.load("b", i).sum()) for i in (0, 1)] == [1.0 * 36, 2.0 * 24]
            assert float(s.load("a", 1).abs().sum()) == 0.0 and s.load("a", 0).shape == (2, 3, 4)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="store"):
        RowStore("ssd", {"a": 1}, (1,), [1], torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match="store"):
        optimal_schedules(wavy, (3,), 2, SearchSettings(grid=8, num_samples=4, store="ram"))


# -------------------------------------------------------------------------------------------- wide calls


def test_wide_calls_fill_batch_size_whatever_the_number_of_noises():
    """M = 8, N = 100, batch_size 256: the search's own calls carry >= 200 rows on average (8 before)."""
    rec = Recorder()
    optimal_schedules(
        rec,
        (3,),
        10,
        SearchSettings(grid=100, num_samples=8, batch_size=256, dp="full", polish="none"),
        dtype=torch.float64,
    )
    teacher = Recorder()
    bf.teacher_trajectory(
        teacher, seeded_noise((3,), 0, 8, dtype=torch.float64), bf.uniform_grid(100), "heun"
    )
    own = rec.widths[len(teacher.widths) :]
    assert rec.widths[: len(teacher.widths)] == teacher.widths  # the teacher runs first, 8 wide
    # level 1: every start 0 .. 99 (the default free start; 8 rows each); level k >= 2: sources k - 1 .. 99,
    # 8 rows each; in calls of 256
    rows = [8 * 100] + [8 * (100 - (k - 1)) for k in range(2, 11)]
    assert own == [w for r in rows for w in [256] * (r // 256) + ([r % 256] if r % 256 else [])]
    assert sum(own) / len(own) >= 200


def test_wide_calls_give_the_narrow_schedule():
    """Calls of 2 rows against calls as wide as the batch: same pointers, costs to summation order (an
    elementwise model: every row's velocity has the same bits in any call)."""
    noise = torch.randn(12, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    times = bf.uniform_grid(20)
    common = {"device": None, "progress": False, "checkpoint": None, "identity": {}}
    ref = accumulate_global(wavy, lambda a, b: noise[a:b], 12, times, 5, GlobalPass(batch_size=12), **common)
    narrow = accumulate_global(
        wavy, lambda a, b: noise[a:b], 12, times, 5, GlobalPass(batch_size=2), **common
    )
    np.testing.assert_array_equal(narrow.pointers, ref.pointers)
    np.testing.assert_allclose(narrow.costs, ref.costs, rtol=1e-13)


def test_wide_evaluator_passes_global_rows_to_a_bank():
    class Bank:
        def __init__(self):
            self.seen = []

        def __call__(self, x, t):
            raise AssertionError("a bank is called through for_rows")

        def for_rows(self, rows):
            self.seen.append(rows.tolist())
            return lambda x, t: x + rows[:, None].to(x.dtype)

    bank = Bank()
    ev = WideEvaluator(bank, width=4)
    out = torch.empty(6, 1)
    ev(torch.zeros(6, 1), torch.zeros(6), torch.tensor([7, 8, 9, 7, 8, 9]), out)
    assert bank.seen == [[7, 8, 9, 7], [8, 9]] and out[:, 0].tolist() == [7, 8, 9, 7, 8, 9]
    assert (ev.calls, ev.rows_evaluated) == (2, 6)


def test_the_global_search_pairs_each_noise_row_with_its_conditioning():
    """A bank shifts the velocity by a per-row constant: the schedule depends on the pairing only through
    global rows, so batch sizes 1, 3 and 10 agree."""

    class Bank(torch.nn.Module):
        def forward(self, x, t):
            raise AssertionError("called through for_rows")

        def for_rows(self, rows):
            shift = (rows % 3).to(torch.float64)[:, None] * 0.1
            return lambda x, t: wavy(x, t) + shift

    settings = [SearchSettings(grid=12, num_samples=10, batch_size=b) for b in (1, 3, 10)]
    results = [optimal_schedules(Bank(), (3,), 3, one, dtype=torch.float64) for one in settings]
    for got in results[1:]:
        for k in (1, 2, 3):
            np.testing.assert_array_equal(got[k].indices, results[0][k].indices)
            assert got[k].cost == pytest.approx(results[0][k].cost, rel=1e-13)


def test_modes_resolve():
    cpu = torch.device("cpu")
    assert [resolve_wide_mode(m, cpu) for m in (None, "eager", "auto", "compile")] == ["eager"] * 3 + [
        "compile"
    ]
    with pytest.raises(ValueError, match="cuda_graph"):
        resolve_wide_mode("cuda_graph", cpu)
    with pytest.raises(ValueError, match="mode"):
        resolve_wide_mode("fast", cpu)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inductor
def test_compile_mode_gives_the_eager_schedule():
    """mode="compile" compiles the teacher's sampler and the search's own calls (tiny MLP on CPU)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, t):
            return self.net(x) * (1.0 + t[:, None])

    model = Net()
    settings = SearchSettings(grid=12, num_samples=6, batch_size=8)
    eager = optimal_schedules(model, (3,), 3, settings)
    compiled = optimal_schedules(model, (3,), 3, replace(settings, mode="compile"))
    for k in (1, 2, 3):
        np.testing.assert_array_equal(compiled[k].indices, eager[k].indices)
        assert compiled[k].cost == pytest.approx(eager[k].cost, rel=1e-9)


# -------------------------------------------------------------------------------------- source restriction


def test_restricting_to_every_source_is_bit_identical():
    noise = torch.randn(9, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    times = bf.uniform_grid(15)
    common = {"device": None, "progress": False, "checkpoint": None, "identity": {}}
    run = GlobalPass(batch_size=4)

    def every(level, costs, pointers):
        return np.array([0]) if level == 1 else np.flatnonzero(pointers[level - 1][: len(times) - 1] >= 0)

    def window(level, costs, pointers):  # every other reachable source
        return every(level, costs, pointers)[::2]

    full = Recorder()
    ref = accumulate_global(full, lambda a, b: noise[a:b], 9, times, 5, run, **common)
    got = accumulate_global(wavy, lambda a, b: noise[a:b], 9, times, 5, run, restrict=every, **common)
    np.testing.assert_array_equal(got.pointers, ref.pointers)
    np.testing.assert_array_equal(got.costs, ref.costs)
    rec = Recorder()
    part = accumulate_global(rec, lambda a, b: noise[a:b], 9, times, 3, run, restrict=window, **common)
    # Level 2 (level 1's states are shared): the best allowed source; equal to the unrestricted row where its
    # pointer is allowed (to float64 rounding: the pairwise kernel reads neighbouring rows), worse elsewhere.
    reached = part.pointers[2] >= 0
    allowed = window(2, part.costs, part.pointers)
    assert np.all(np.isin(part.pointers[2][reached], allowed)) and reached[-1]
    same = reached & np.isin(ref.pointers[2], allowed)
    np.testing.assert_allclose(part.costs[2][same], ref.costs[2][same], rtol=1e-9)
    assert np.all(part.costs[2][reached] >= ref.costs[2][reached] * (1 - 1e-9))
    teacher_rows = 9 * 2 * (len(times) - 1)  # Heun: 2 evaluations per step
    full_rows_3 = teacher_rows + 9 * (1 + 13 + 12)  # levels 1, 2 and 3 evaluate 1, 13 and 12 sources
    assert sum(full.widths[: len(rec.widths)]) <= full_rows_3  # (a prefix of the 5-level run)
    assert sum(rec.widths) < full_rows_3  # the sources left out are not evaluated
    with pytest.raises(ValueError, match="sources of level 2"):
        only_zero = lambda k, c, p: np.array([0])  # noqa: E731
        accumulate_global(wavy, lambda a, b: noise[a:b], 9, times, 3, run, restrict=only_zero, **common)


# ----------------------------------------------------------------------------------------------- ranks

WORLD = 2


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        scheds = optimal_schedules(
            wavy,
            (3,),
            4,
            SearchSettings(grid=16, num_samples=19, batch_size=4, store="disk", store_dir=out_dir),
            dtype=torch.float64,
        )
        np.save(os.path.join(out_dir, f"idx{rank}.npy"), np.concatenate([s.indices for s in scheds.values()]))
        np.save(os.path.join(out_dir, f"cost{rank}.npy"), np.array([s.cost for s in scheds.values()]))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_with_the_disk_store(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    single = optimal_schedules(
        wavy, (3,), 4, SearchSettings(grid=16, num_samples=19, batch_size=4), dtype=torch.float64
    )
    for r in range(WORLD):
        np.testing.assert_array_equal(np.load(tmp_path / f"idx{r}.npy"),
                                      np.concatenate([s.indices for s in single.values()]))  # fmt: skip
        np.testing.assert_allclose(np.load(tmp_path / f"cost{r}.npy"), [s.cost for s in single.values()],
                                   rtol=1e-13)  # fmt: skip
    assert not [f for f in os.listdir(tmp_path) if f.startswith("boss_fast_rows_")]


def test_shard_plan():
    shard = Shard(19, 4, rank=1, world=2)
    assert shard.mine == [1, 3] and shard.sizes == [4, 4] and shard.span(4) == (16, 19)
    assert Shard(19, 4, rank=0, world=2).sizes == [4, 4, 3]


# --------------------------------------------------------------------------------------- kill -9, resume

_KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from boss_fast.search import SearchSettings, optimal_schedules

    calls = {"n": 0}

    def velocity(x, t):
        calls["n"] += 1
        if calls["n"] == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
        return torch.sin(3.0 * x) * (1.0 + t.view(-1, 1))

    dp, polish = ("full", "none") if sys.argv[1] == "global" else (None, None)  # the DP's own levels
    settings = SearchSettings(grid=12, num_samples=11, batch_size=4, objective=sys.argv[1], store="disk",
                              start=sys.argv[4], dp=dp, polish=polish)
    optimal_schedules(velocity, (3,), 4, settings, dtype=torch.float64, checkpoint=sys.argv[2],
                      checkpoint_key="wavy")
    """
)


# The global runs below kill and resume the full DP's levels: no coarse route, no polish after it.
_DP_ONLY = {"global": {"dp": "full", "polish": "none"}, "local": {}}


def _calls(objective: str, max_steps: int, num_samples: int, start: str) -> int:
    rec = Recorder()
    optimal_schedules(
        rec,
        (3,),
        max_steps,
        SearchSettings(
            grid=12,
            num_samples=num_samples,
            batch_size=4,
            objective=objective,
            start=start,
            **_DP_ONLY[objective],
        ),
        dtype=torch.float64,
    )
    return len(rec.widths)


@pytest.mark.parametrize(
    ("objective", "field", "start"),
    [("global", "levels_done", "zero"), ("local", "batches_done", "zero"), ("global", "levels_done", "noise"),
     ("local", "batches_done", "scaled")],
)  # fmt: skip
def test_kill_minus_9_and_resume_bit_for_bit(tmp_path, objective, field, start):
    """SIGKILL two calls into level 3 (global: after the teacher and two levels) or into the third batch
    (local); the rerun resumes from the checkpoint's 2 finished steps and returns the fresh run's bits
    (with the start pinned and free)."""
    if objective == "global":
        kill_at = _calls("global", 2, 11, start) + 2
    else:
        kill_at = _calls("local", 4, 8, start) + 2
    path = str(tmp_path / "ckpt.npz")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    argv = [sys.executable, "-c", _KILLED_RUN, objective, path, str(kill_at), start]
    proc = subprocess.run(argv, env=env)
    assert proc.returncode == -signal.SIGKILL
    with np.load(path) as stored:
        assert int(stored[field]) == 2
    # The killed global run's disk store, named after its checkpoint (the local objective keeps no rows).
    assert _rows_left(tmp_path) == ([checkpoint_rows(path)] if objective == "global" else [])
    settings = SearchSettings(
        grid=12,
        num_samples=11,
        batch_size=4,
        objective=objective,
        store="disk",
        start=start,
        **_DP_ONLY[objective],
    )
    resumed = optimal_schedules(
        wavy, (3,), 4, settings, dtype=torch.float64, checkpoint=path, checkpoint_key="wavy"
    )
    assert _rows_left(tmp_path) == []  # the resume removed what the killed run left (it stayed on main)
    fresh = optimal_schedules(wavy, (3,), 4, replace(settings, store="device"), dtype=torch.float64)
    for k in (1, 2, 3, 4):
        np.testing.assert_array_equal(resumed[k].indices, fresh[k].indices)
        assert resumed[k].cost == fresh[k].cost


def _rows_left(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith(ROWS_PREFIX))


def test_a_killed_runs_rows_are_removed_by_a_rerun_that_has_nothing_left_to_do(tmp_path):
    """Killed after its last level was saved, before its store was closed: the rerun returns the finished
    table at once and removes the rows; rows of another checkpoint, or in another store_dir, stay."""
    path = tmp_path / "ckpt.npz"
    settings = SearchSettings(grid=8, num_samples=5, batch_size=4, store="disk")
    want = optimal_schedules(
        wavy, (3,), 2, settings, dtype=torch.float64, checkpoint=path, checkpoint_key="w"
    )
    left = tmp_path / checkpoint_rows(path)
    other = tmp_path / checkpoint_rows(tmp_path / "other.npz")
    for folder in (left, other):
        folder.mkdir()
        (folder / "states.bin").write_bytes(b"\0" * 64)
    got = optimal_schedules(wavy, (3,), 2, settings, dtype=torch.float64, checkpoint=path, checkpoint_key="w")
    assert _rows_left(tmp_path) == [other.name]
    assert [got[k].indices.tolist() for k in (1, 2)] == [want[k].indices.tolist() for k in (1, 2)]
    assert checkpoint_rows(path) != checkpoint_rows(tmp_path / "sub" / "ckpt.npz")  # one name per file


# --------------------------------------------------------------------------------------- pair-cache header


def test_a_pair_shard_of_another_run_is_refused(tmp_path):
    torch.manual_seed(0)
    teacher = torch.nn.Linear(2, 2).double()

    def velocity_module():
        class V(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = teacher

            def forward(self, x, t):
                return self.lin(x)

        return V()

    cost = np.triu(np.subtract.outer(np.arange(11.0), np.arange(11.0)) ** 2, 1)
    sched = bf.schedules_from_cost(cost, 2, grid=bf.uniform_grid(10))[2]
    noise = torch.randn(4, 2, dtype=torch.float64)
    model = velocity_module()
    straightening_pairs(model, sched, noise, grid=10, batch_size=2, cache_dir=tmp_path)
    (folder,) = [os.path.join(tmp_path, d) for d in os.listdir(tmp_path)]
    shard = os.path.join(folder, sorted(os.listdir(folder))[0])
    save_file({"states": torch.zeros(2, 3, 2, dtype=torch.float64)}, shard,
              metadata={"format": "boss_fast.pair_shard", "version": "1", "key": "another"})  # fmt: skip
    with pytest.raises(ValueError, match="different run"):
        straightening_pairs(model, sched, noise, grid=10, batch_size=2, cache_dir=tmp_path)
