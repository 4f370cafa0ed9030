"""Straightening pairs (boss_fast.straighten.pairs): teacher states, the pair grid, the shard cache, banks."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from _straightening import Bank, TinyVelocity, dit_schedule, schedule_at
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

import boss_fast as bf
from boss_fast._checkpoint import CHECKSUM_KEY
from boss_fast._identity import value_digest
from boss_fast.grids import uniform_grid
from boss_fast.straighten import PairTeacher, pair_grid, straightening_pairs
from boss_fast.straighten.pairs import PILOT_NOISES, pair_density
from boss_fast.trajectories import teacher_trajectory


def test_pairs_match_a_direct_teacher_run_and_the_cache(tmp_path):
    teacher = TinyVelocity()
    sched = schedule_at(10, [0, 3, 7, 10])
    noise = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    pairs = straightening_pairs(teacher, sched, noise, grid=10, batch_size=2, cache_dir=tmp_path)
    # The teacher run on the same batches of 2 (a GEMM's bits may depend on the batch size on some CPUs).
    direct = torch.cat([teacher_trajectory(teacher, b, uniform_grid(10)).states for b in noise.split(2)], 1)
    k = sched.steps
    assert pairs.start.shape == (5 * k, 2) and pairs.t_end.shape == (5 * k,)
    for m in range(5):
        for j in range(k):
            # same Euler steps in the same order: bit for bit
            assert torch.equal(pairs.start[m * k + j], direct[sched.indices[j], m])
            assert torch.equal(pairs.end[m * k + j], direct[sched.indices[j + 1], m])
            assert pairs.t_start[m * k + j].item() == pytest.approx(sched.times[j])
            assert pairs.t_end[m * k + j].item() == pytest.approx(sched.times[j + 1])
    shards = [f for _, _, files in os.walk(tmp_path) for f in files if f.endswith(".safetensors")]
    assert len(shards) == 3  # 5 noises in batches of 2

    # A second run reads the shards: a teacher with the same weights (same cache key) that would return
    # NaN proves it is not called.
    poisoned = TinyVelocity()  # same class and weights; a forward hook (not fingerprinted) makes it NaN
    poisoned.load_state_dict(teacher.state_dict())
    poisoned.register_forward_hook(lambda module, args, out: out * math.nan)
    cached = straightening_pairs(poisoned, sched, noise, grid=10, batch_size=2, cache_dir=tmp_path)
    for a, b in zip(pairs, cached, strict=True):
        assert torch.equal(a, b)


def test_pair_grid_spreads_the_steps_over_the_intervals_by_length():
    sched = schedule_at(10, [0, 3, 7, 10])
    times, indices = pair_grid(sched, 10)  # the schedule's own grid size: its grid
    assert np.allclose(times, uniform_grid(10)) and indices.tolist() == [0, 3, 7, 10]
    for steps in (3, 4, 5, 7, 23):
        times, indices = pair_grid(sched, steps)
        assert len(times) == steps + 1 and np.all(np.diff(times) > 0)
        assert np.array_equal(times[indices], sched.times)  # the schedule's times exactly
        assert np.diff(indices).min() >= 1
    # shares 1.5 / 2 / 1.5: floors 1 / 2 / 1, the fifth step to the largest remainder (the earlier on a tie)
    assert np.diff(pair_grid(sched, 5)[1]).tolist() == [2, 2, 1]
    # A schedule starting above the grid's first point: the teacher runs from grid[0] to it first.
    grid = uniform_grid(5)
    late = bf.Schedule(grid[[1, 3, 5]], np.array([1, 3, 5]), 0.0, grid, start="noise")
    times, indices = pair_grid(late, 10)
    assert times[0] == 0.0 and indices.tolist() == [2, 6, 10] and np.allclose(times, uniform_grid(10))
    with pytest.raises(ValueError, match=r"pair_steps=2 is fewer than the 3 segments.*>= 3, or None"):
        pair_grid(sched, 2)  # fewer steps than intervals
    with pytest.raises(ValueError, match=r"fewer than the 3 segments.*grid\[0\] to its start"):
        pair_grid(late, 2)


def test_pairs_on_a_coarser_teacher_and_another_solver_match_a_direct_run(tmp_path):
    teacher = TinyVelocity()
    sched = schedule_at(10, [0, 3, 7, 10])
    noise = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    times, indices = pair_grid(sched, 6)
    pairs = straightening_pairs(
        teacher, sched, noise, grid=10, batch_size=5, cache_dir=tmp_path, pair_teacher=PairTeacher(6, "heun")
    )
    direct = teacher_trajectory(teacher, noise, times, "heun").states[indices]  # (K + 1, M, 2)
    k = sched.steps
    for j in range(k):
        assert torch.equal(pairs.start[j::k], direct[j]) and torch.equal(pairs.end[j::k], direct[j + 1])
    assert pairs.t_start[:k].tolist() == pytest.approx(sched.times[:-1].tolist())
    # Another teacher, another cache: the schedule's own teacher does not read these shards.
    plain = straightening_pairs(teacher, sched, noise, grid=10, batch_size=5, cache_dir=tmp_path)
    assert len(os.listdir(tmp_path)) == 2 and not torch.equal(plain.end, pairs.end)
    with pytest.raises(ValueError, match="pair_solver"):
        PairTeacher(solver="rk45")
    with pytest.raises(ValueError, match="pair_steps=2 is fewer"):
        straightening_pairs(teacher, sched, noise, grid=10, pair_teacher=PairTeacher(steps=2))
    with pytest.raises(TypeError, match="pair_teacher must be a PairTeacher"):
        straightening_pairs(teacher, sched, noise, grid=10, pair_teacher={"steps": 6})


class Stiff(nn.Module):
    """dx/dt = 40 t^9 x: slow until t ~ 0.7, then fast; x(t) = x(0) exp(4 t^10), a closed form for the pairs.
    ``calls`` counts evaluations per noise (every call carries every noise of a batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return 40 * t.reshape(-1, *[1] * (x.dim() - 1)) ** 9 * x


class Profile(nn.Module):
    """v(x, t) = f(t) on every entry, f linear between the given values at the grid times: the Euler pilot's
    slope changes are f's differences, whatever x."""

    def __init__(self, times, values) -> None:
        super().__init__()
        self.times, self.values = np.asarray(times), np.asarray(values)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        f = torch.as_tensor(np.interp(t.cpu().numpy(), self.times, self.values), dtype=x.dtype)
        return f.reshape(-1, *[1] * (x.dim() - 1)).expand_as(x)


def test_pair_density_is_the_square_root_of_how_fast_the_slope_changes():
    grid = uniform_grid(4)
    noise = torch.randn(5, 3, 2)
    changes = Profile(grid[:4], [1.0, 1.5, 3.5, 7.5])  # 2, 8, 16 per unit time
    assert pair_density(changes, noise, grid).tolist() == pytest.approx([2**0.5, 8**0.5, 4.0, 4.0])
    assert pair_density(changes, noise, grid, batch_size=2).tolist() == pytest.approx(
        [2**0.5, 8**0.5, 4.0, 4.0]
    )
    assert pair_density(Profile(grid, [1.0] * 5), noise, grid) is None  # straight: no spacing to choose
    floor = pair_density(Profile(grid[:4], [0.0, 0.0, 4.0, 4.0]), noise, grid)
    assert floor.min() == pytest.approx(1e-3 * floor.max())  # every cell keeps some mass
    with pytest.raises(ValueError, match="not finite"):
        pair_density(Profile(grid[:4], [0.0, float("nan"), 1.0, 2.0]), noise, grid)


def test_the_pilot_pairs_noise_m_with_conditioning_m_mod_p():
    """A bank's pilot sees each noise with its own conditioning, whatever the pilot's batching."""
    grid = uniform_grid(6)
    noise = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    whole = pair_density(Bank(), noise, grid, batch_size=7)
    assert np.allclose(pair_density(Bank(), noise, grid, batch_size=3), whole, rtol=1e-12, atol=0)


def test_pair_grid_cuts_by_the_densitys_mass():
    sched = schedule_at(10, [0, 3, 7, 10])
    flat = pair_grid(sched, 7, density=np.ones(10))
    np.testing.assert_allclose(flat[0], pair_grid(sched, 7)[0], rtol=0, atol=1e-15)  # constant: the old cuts
    assert flat[1].tolist() == pair_grid(sched, 7)[1].tolist()
    rho = np.linspace(1.0, 10.0, 10)
    times, indices = pair_grid(sched, 23, density=rho)
    assert np.array_equal(times[indices], sched.times) and np.all(np.diff(times) > 0)
    cdf = np.concatenate([[0.0], np.cumsum(rho * np.diff(sched.grid))])
    mass = np.diff(np.interp(times, sched.grid, cdf))
    for a, b in zip(indices[:-1], indices[1:], strict=True):  # equal masses within each segment
        np.testing.assert_allclose(mass[a:b], mass[a], rtol=1e-9)
    assert np.diff(times)[indices[-2] :].max() < np.diff(times)[: indices[1]].min()  # denser where rho is
    for bad in (np.ones(9), np.r_[np.ones(9), 0.0], np.r_[np.ones(9), np.inf]):
        with pytest.raises(ValueError, match="density must hold 10"):
            pair_grid(sched, 7, density=bad)


def test_adaptive_pairs_are_closer_to_the_exact_flow_for_the_same_steps_and_cost_a_pilot():
    """On a flow that is slow and then fast, the pilot's cuts put the steps where the slope changes: the
    Heun pairs' targets land nearer the closed form than evenly cut ones. The pilot costs one Euler run of the
    first PILOT_NOISES noises on the schedule's grid; the pairs, pair_steps Heun steps of every noise."""
    sched = schedule_at(20, [0, 10, 20])
    noise = torch.randn(PILOT_NOISES + 8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = [noise * math.exp(4 * float(t) ** 10) for t in sched.times]
    errors = {}
    for spacing in ("uniform", "adaptive"):
        model = Stiff()
        pairs = straightening_pairs(
            model, sched, noise, grid=20, batch_size=len(noise), pair_teacher=PairTeacher(6, "heun", spacing),
        )  # fmt: skip
        ends = pairs.end.view(len(noise), 2, 2)
        errors[spacing] = max(float((ends[:, j] - exact[j + 1]).abs().max()) for j in range(2))
        assert model.calls == 2 * 6 + (20 if spacing == "adaptive" else 0)  # pilot: 20 Euler steps, 1 batch
    assert errors["adaptive"] < 0.5 * errors["uniform"], errors


def test_adaptive_pairs_reuse_their_cache_after_the_pilot(tmp_path):
    """The pilot's cuts key the cache (they are the teacher's grid): a second run with the same noises pays
    the pilot again and reads every pair from the shards; uniform cuts of the same steps are another cache."""
    sched = schedule_at(20, [0, 10, 20])
    noise = torch.randn(12, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kw = dict(grid=20, batch_size=6, cache_dir=tmp_path)
    model = Stiff()
    first = straightening_pairs(model, sched, noise, **kw, pair_teacher=PairTeacher(6, "heun", "adaptive"))
    assert model.calls == 20 + 2 * (2 * 6)  # the pilot (one call of 12 noises), then 2 shards of Heun 6
    model.calls = 0
    again = straightening_pairs(model, sched, noise, **kw, pair_teacher=PairTeacher(6, "heun", "adaptive"))
    assert model.calls == 20 and torch.equal(first.end, again.end)  # the pilot only
    straightening_pairs(model, sched, noise, **kw, pair_teacher=PairTeacher(6, "heun"))
    assert len(os.listdir(tmp_path)) == 2


def test_adaptive_spacing_is_refused_without_fixed_steps():
    for kw in ({}, {"steps": 6, "solver": "dopri5"}):
        with pytest.raises(ValueError, match="pair_spacing 'adaptive'.*pair_steps"):
            PairTeacher(spacing="adaptive", **kw)
    with pytest.raises(ValueError, match="pair_spacing"):
        PairTeacher(steps=6, spacing="even")
    dopri = bf.Schedule(
        uniform_grid(10)[[0, 5, 10]], np.array([0, 5, 10]), 0.0, uniform_grid(10), solver="dopri5"
    )
    with pytest.raises(ValueError, match="the pairs' teacher is dopri5"):  # the schedule's own solver
        straightening_pairs(
            Stiff(), dopri, torch.randn(4, 2), grid=10, pair_teacher=PairTeacher(6, spacing="adaptive")
        )


class Decay(nn.Module):
    """dx/dt = -x: the Euler teacher on a uniform grid of step h reaches (1 - h)^i x(0) at grid point i, a
    closed form for every pair."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -x


@pytest.mark.parametrize(
    "start, indices, scale",
    [("noise", [3, 6, 10], 1.0), ("scaled", [3, 6, 10], 0.7), ("zero", [0, 6, 10], 1.0),
     ("scaled", [0, 6, 10], 1.0)],
)  # fmt: skip
def test_the_first_pair_starts_from_the_rules_state_and_targets_stay_on_the_teacher(start, indices, scale):
    """The teacher runs from the noise at t = 0; the first interval's input is the start rule's state at
    tau_0 (the noise for "noise", 0.7 x noise for "scaled" at 0.3), every target a teacher state."""
    grid = uniform_grid(10)
    sched = bf.Schedule(times=grid[indices], indices=np.array(indices), cost=0.0, grid=grid, start=start)
    noise = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pairs = straightening_pairs(Decay(), sched, noise, grid=10, batch_size=3)
    teacher = [0.9**i * noise for i in range(11)]  # (1 - h)^i x(0), h = 0.1
    starts, ends = pairs.start.view(4, 2, 3), pairs.end.view(4, 2, 3)
    torch.testing.assert_close(starts[:, 0], scale * noise, rtol=0, atol=0)
    torch.testing.assert_close(starts[:, 1], teacher[indices[1]], rtol=1e-15, atol=0)
    torch.testing.assert_close(ends[:, 0], teacher[indices[1]], rtol=1e-15, atol=0)
    torch.testing.assert_close(ends[:, 1], teacher[10], rtol=1e-15, atol=0)
    assert pairs.t_start.view(4, 2)[:, 0].tolist() == [grid[indices[0]]] * 4


def test_a_pair_shard_whose_states_differ_from_its_checksum_is_refused(tmp_path):
    """A shard with one state edited (its header kept) trained on the edited pairs on main."""
    teacher, sched = TinyVelocity(), schedule_at(10, [0, 3, 7, 10])
    noise = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    want = straightening_pairs(teacher, sched, noise, grid=10, batch_size=2, cache_dir=tmp_path)
    path = next(p for p in tmp_path.rglob("*.safetensors"))
    with safe_open(str(path), framework="pt") as f:
        metadata, states = f.metadata(), f.get_tensor("states").clone()  # not a view of the file
    assert metadata[CHECKSUM_KEY] == value_digest(states)
    path.write_bytes(save({"states": states * 2}, metadata=metadata))
    with pytest.raises(ValueError, match=r"pair-cache shard .*\.safetensors fails its checksum"):
        straightening_pairs(teacher, sched, noise, grid=10, batch_size=2, cache_dir=tmp_path)
    del metadata[CHECKSUM_KEY]  # as the code before the checksum wrote it: read as it is
    path.write_bytes(save({"states": states}, metadata=metadata))
    got = straightening_pairs(teacher, sched, noise, grid=10, batch_size=2, cache_dir=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))


def test_pairs_pair_noise_m_with_conditioning_m_mod_p_whatever_the_batching():
    bank, sched = Bank(), dit_schedule(shape=(2,))
    noise = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    by2 = straightening_pairs(bank, sched, noise, grid=8, batch_size=2)
    by3 = straightening_pairs(bank, sched, noise, grid=8, batch_size=3)
    torch.testing.assert_close(by2.start, by3.start, rtol=0, atol=1e-12)
    k = sched.steps
    for m in range(7):  # each noise alone, with its own conditioning m mod 3
        states = teacher_trajectory(bank.for_rows(torch.tensor([m])), noise[m : m + 1], sched.grid).states
        want = states[sched.indices[:-1].tolist(), 0]
        torch.testing.assert_close(by2.start[m * k : (m + 1) * k], want, atol=1e-12, rtol=0)
    # Negative control: a plain call (batch position, not noise index) would pair noise 2 with entry 0.
    shifted = teacher_trajectory(bank.for_rows(torch.tensor([0])), noise[2:3], sched.grid).states
    assert not torch.allclose(by2.start[2 * k + 1], shifted[int(sched.indices[1]), 0])


def test_straightening_pairs_on_the_sampler(digits_dit):
    grid = bf.uniform_grid(8)
    sched = bf.schedules_from_cost(np.ones((9, 9)), 3, grid=grid)[3]
    noise = torch.randn(5, 1, 8, 8)
    plain = straightening_pairs(digits_dit, sched, noise, grid=8, batch_size=2)
    eager = straightening_pairs(digits_dit, sched, noise, grid=8, batch_size=2, mode="eager")
    for name in ("start", "end", "t_start", "t_end"):
        assert torch.equal(getattr(eager, name), getattr(plain, name)), name
