"""Straightening (BOSS stage 2): pairs, loss, training semantics, LoRA, resume, DDP, CLI and bad input."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

import boss_fast as bf
from boss_fast._checkpoint import CHECKSUM_KEY
from boss_fast._identity import value_digest
from boss_fast.grids import uniform_grid
from boss_fast.models.dit import DiT
from boss_fast.straighten import (
    FULL_LR,
    LORA_ALPHA_PER_RANK,
    LORA_LR,
    StraightenMemory,
    StraightenSettings,
    add_lora,
    pair_grid,
    pair_loss,
    straighten,
    straightening_pairs,
)
from boss_fast.trajectories import teacher_trajectory

HAS_PEFT = importlib.util.find_spec("peft") is not None
needs_peft = pytest.mark.skipif(not HAS_PEFT, reason="peft not installed (pip install 'boss_fast[lora]')")


SETTING_NAMES = {f.name for f in dataclasses.fields(StraightenSettings)}


def _straighten(model, sched, teacher=None, **kwargs):
    """``straighten`` with the keywords split: the settings' fields into a ``StraightenSettings``, the rest
    (shape, noise, progress, checkpoint_dir, ..., return_stats) passed as the run's keywords."""
    settings = StraightenSettings(**{k: v for k, v in kwargs.items() if k in SETTING_NAMES})
    run = {k: v for k, v in kwargs.items() if k not in SETTING_NAMES}
    return straighten(model, sched, teacher, settings, **run)


class TinyVelocity(nn.Module):
    """A small MLP velocity on (B, D) states: v = net([x, t])."""

    def __init__(self, dim: int = 2, hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None].to(x.dtype)], dim=1))


class RotationFlow(nn.Module):
    """dx/dt = A x with A a rotation generator of angle ``w``: x(1) = R(w) x(0), a curved flow whose exact
    one-step velocity (R - I) x is linear in x, so a linear student can represent it exactly."""

    def __init__(self, w: float = 1.2) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2, bias=False, dtype=torch.float64)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[0.0, -w, 0.0], [w, 0.0, 0.0]], dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.cat([x, t[:, None].to(x.dtype)], dim=1))


def _schedule(n: int, indices: list[int]) -> bf.Schedule:
    grid = uniform_grid(n)
    idx = np.asarray(indices)
    return bf.Schedule(times=grid[idx], indices=idx, cost=0.0, grid=grid)


FAST = dict(num_pairs=16, grid=10, iters=4, batch_size=8, warmup=2, progress=False, shape=(2,))


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------------ pairs


def test_pairs_match_a_direct_teacher_run_and_the_cache(tmp_path):
    teacher = TinyVelocity()
    sched = _schedule(10, [0, 3, 7, 10])
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
    sched = _schedule(10, [0, 3, 7, 10])
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
    with pytest.raises(ValueError, match="pair_steps"):
        pair_grid(sched, 2)  # fewer steps than intervals


def test_pairs_on_a_coarser_teacher_and_another_solver_match_a_direct_run(tmp_path):
    teacher = TinyVelocity()
    sched = _schedule(10, [0, 3, 7, 10])
    noise = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    times, indices = pair_grid(sched, 6)
    pairs = straightening_pairs(
        teacher, sched, noise, grid=10, batch_size=5, cache_dir=tmp_path, pair_steps=6, pair_solver="heun"
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
        straightening_pairs(teacher, sched, noise, grid=10, pair_solver="rk45")
    with pytest.raises(ValueError, match="pair_steps"):
        straightening_pairs(teacher, sched, noise, grid=10, pair_steps=2)


def test_straightening_on_a_coarser_teacher_is_deterministic_and_checkpointed_with_it(tmp_path):
    sched = _schedule(10, [0, 4, 10])
    cheap = {**FAST, "pair_steps": 4, "pair_solver": "heun"}
    first = _straighten(TinyVelocity(), sched, **cheap, checkpoint_dir=tmp_path)
    again = _straighten(TinyVelocity(), sched, **cheap)
    default = _straighten(TinyVelocity(), sched, **FAST)
    for key, value in first.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)  # same seed, same bits
    assert any(not torch.equal(default.state_dict()[k], v) for k, v in first.state_dict().items())
    with pytest.raises(ValueError, match="other settings.*pair_steps"):
        _straighten(TinyVelocity(), sched, **{**cheap, "pair_steps": 5}, checkpoint_dir=tmp_path)


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


def _one_step_errors_before_and_after(model: nn.Module, sched: bf.Schedule) -> tuple[float, float]:
    """The K-step sampler's mean squared endpoint error against the teacher (run from the noise at t = 0 on
    the schedule's grid) over 256 noises, before and after straightening for ``sched`` (300 iterations)."""
    noise = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    teacher_end = teacher_trajectory(model, noise, sched.grid).states[-1]

    def one_step_error(m: nn.Module) -> float:
        return float((bf.sample(m, noise, sched) - teacher_end).square().sum(1).mean())

    student = _straighten(
        model, sched, num_pairs=256, grid=50, iters=300, batch_size=64, lr=2e-2, warmup=10, ema=0.9,
        progress=False, shape=(2,),
    )  # fmt: skip
    return one_step_error(model), one_step_error(student)


def test_a_schedule_that_starts_later_is_straightened_from_where_its_sampler_starts():
    """A 1-step schedule from t = 0.4 (rule "noise"): the student learns the jump from the noise itself at
    0.4 to the teacher's endpoint (run from the noise at 0), so bf.sample, which starts there, lands on it."""
    model = RotationFlow()
    grid = uniform_grid(50)
    sched = bf.Schedule(times=grid[[20, 50]], indices=np.array([20, 50]), cost=0.0, grid=grid, start="noise")
    before, after = _one_step_errors_before_and_after(model, sched)
    assert before > 0.3
    assert after < 0.01 * before


def test_a_pair_shard_whose_states_differ_from_its_checksum_is_refused(tmp_path):
    """A shard with one state edited (its header kept) trained on the edited pairs on main."""
    teacher, sched = TinyVelocity(), _schedule(10, [0, 3, 7, 10])
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


def test_pair_loss_variants():
    pred, target = torch.zeros(3, 4), torch.tensor([[1.0] * 4, [2.0] * 4, [1e-4] * 4])
    np.testing.assert_allclose(pair_loss(pred, target, "l2").numpy(), [1.0, 4.0, 1e-8], rtol=1e-5)
    c = 0.00054 * math.sqrt(4)
    expected = [math.sqrt(4 * v * v + c * c) - c for v in (1.0, 2.0, 1e-4)]
    np.testing.assert_allclose(pair_loss(pred, target, "pseudo_huber").numpy(), expected, rtol=1e-5)
    # 1 / stopgrad(loss + 1e-8): about 1 wherever the loss is well above eps
    np.testing.assert_allclose(pair_loss(pred, target, "l2", normalize=True)[:2].numpy(), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown loss"):
        pair_loss(pred, target, "l1")


# --------------------------------------------------------------------------------------------- training


def _full_loss(model: nn.Module, teacher: nn.Module, sched: bf.Schedule, noise: torch.Tensor) -> float:
    p = straightening_pairs(teacher, sched, noise, grid=sched.grid)
    target = (p.end - p.start) / (p.t_end - p.t_start)[:, None]
    with torch.no_grad():
        return float(pair_loss(model(p.start, p.t_start), target).mean())


def test_one_training_step_reduces_the_loss():
    model = RotationFlow()
    sched = _schedule(10, [0, 5, 10])
    noise = bf.seeded_noise((2,), 0, 16, seed=0, dtype=torch.float64)
    kwargs = {**FAST, "iters": 1, "warmup": 0, "batch_size": 64}
    student = _straighten(model, sched, **kwargs, lr=1e-2, ema=0.0)
    assert _full_loss(student, model, sched, noise) < 0.95 * _full_loss(model, model, sched, noise)
    assert not any(p.requires_grad for p in student.parameters()) and not student.training
    assert torch.equal(model.lin.weight, RotationFlow().lin.weight)  # the input model is not modified


def test_straightening_a_one_step_schedule_on_a_rotation_flow_drives_its_error_down():
    model = RotationFlow()
    sched = _schedule(50, [0, 50])
    before, after = _one_step_errors_before_and_after(model, sched)
    assert before > 0.3  # |(I + A - R(1.2)) x|^2: one Euler step cuts the arc's corner badly
    assert after < 0.01 * before


def test_ema_is_the_average_of_the_trained_weights():
    model = TinyVelocity()
    sched = _schedule(10, [0, 5, 10])
    last = _straighten(model, sched, **{**FAST, "iters": 1}, ema=0.0)  # ema 0: the last weights
    half = _straighten(model, sched, **{**FAST, "iters": 1}, ema=0.5, ema_warmup=False)
    warm = _straighten(model, sched, **{**FAST, "iters": 1}, ema=0.5)  # step 0: decay min(0.5, 1 / 10)
    for key, w0 in model.state_dict().items():
        w1 = last.state_dict()[key]
        torch.testing.assert_close(half.state_dict()[key], 0.5 * (w0 + w1))
        torch.testing.assert_close(warm.state_dict()[key], 0.1 * w0 + 0.9 * w1)


def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path):
    model = TinyVelocity()
    sched = _schedule(10, [0, 4, 10])
    kwargs = {**FAST, "iters": 10, "checkpoint_every": 3}
    reference = _straighten(model, sched, **kwargs)

    def crash(step: int, loss: float) -> None:
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _straighten(model, sched, **kwargs, checkpoint_dir=tmp_path, callback=crash)
    seen = []
    resumed = _straighten(
        model, sched, **kwargs, checkpoint_dir=tmp_path, callback=lambda s, v: seen.append(s)
    )
    assert seen == [7, 8, 9, 10]  # the checkpoint at step 6: one interval (step 7) lost
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value)  # bit for bit


def test_a_finished_run_with_more_iterations_is_refused_and_a_shorter_one_is_extended(tmp_path):
    """iters=10 on a folder holding a finished 30-step run returned the 30-step model on main."""
    model, sched = TinyVelocity(), _schedule(10, [0, 4, 10])
    args = {**FAST, "iters": 6, "checkpoint_every": 3}
    _straighten(model, sched, **args, checkpoint_dir=tmp_path)  # finished at step 6
    with pytest.raises(
        ValueError, match=r"straighten\.pt holds a run at step 6, past iters = 4: .*iters >= 6"
    ):
        _straighten(model, sched, **{**args, "iters": 4}, checkpoint_dir=tmp_path)
    seen = []
    extended, stats = _straighten(model, sched, **{**args, "iters": 9}, checkpoint_dir=tmp_path,
                                  callback=lambda s, v: seen.append(s), return_stats=True)  # fmt: skip
    fresh = _straighten(model, sched, **{**args, "iters": 9})
    assert seen == [7, 8, 9] and stats.steps == 9
    for key, value in fresh.state_dict().items():
        assert torch.equal(extended.state_dict()[key], value)  # bit for bit
    again, stats = _straighten(
        model, sched, **{**args, "iters": 9}, checkpoint_dir=tmp_path, return_stats=True
    )
    assert stats.steps == 9 and all(
        torch.equal(again.state_dict()[k], v) for k, v in fresh.state_dict().items()
    )


def test_a_checkpoint_from_another_model_or_schedule_is_refused(tmp_path):
    model = TinyVelocity()
    sched = _schedule(10, [0, 4, 10])
    _straighten(model, sched, **FAST, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="written for model"):
        _straighten(TinyVelocity(seed=1), sched, **FAST, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="different schedule"):
        _straighten(model, _schedule(10, [0, 5, 10]), **FAST, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="other settings"):
        _straighten(model, sched, **FAST, checkpoint_dir=tmp_path, lr=1e-3)


def test_a_corrupt_checkpoint_is_refused_by_name(tmp_path):
    (tmp_path / "straighten.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"straighten checkpoint .*straighten\.pt is unreadable"):
        _straighten(TinyVelocity(), _schedule(10, [0, 4, 10]), **FAST, checkpoint_dir=tmp_path)


def test_a_truncated_empty_or_bit_flipped_checkpoint_is_refused_by_name(tmp_path):
    model, sched = TinyVelocity(), _schedule(10, [0, 4, 10])
    _straighten(model, sched, **FAST, checkpoint_dir=tmp_path)
    path = tmp_path / "straighten.pt"
    good = path.read_bytes()
    state = torch.load(path, weights_only=True)
    flipped = state["params"][0].clone()
    flipped.view(torch.int32).view(-1)[0] ^= 1  # one bit of the parameter data
    state["params"][0] = flipped
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"straighten\.pt fails its checksum"):
        _straighten(model, sched, **FAST, checkpoint_dir=tmp_path)
    for data in (good[: len(good) // 2], b""):
        path.write_bytes(data)
        with pytest.raises(ValueError, match=r"straighten checkpoint .*straighten\.pt is unreadable"):
            _straighten(model, sched, **FAST, checkpoint_dir=tmp_path)
    path.write_bytes(good)
    _straighten(model, sched, **FAST, checkpoint_dir=tmp_path)  # the intact file still resumes


def test_a_checkpoint_for_another_teacher_or_noise_is_refused(tmp_path):
    model, sched = TinyVelocity(), _schedule(10, [0, 4, 10])
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(3))
    _straighten(model, sched, **FAST, checkpoint_dir=tmp_path, noise=noise)
    with pytest.raises(ValueError, match="another teacher"):
        _straighten(model, sched, **FAST, checkpoint_dir=tmp_path, noise=noise, teacher=TinyVelocity(seed=1))
    with pytest.raises(ValueError, match="another noise"):
        _straighten(model, sched, **FAST, checkpoint_dir=tmp_path, noise=noise + 1)
    _straighten(model, sched, **FAST, checkpoint_dir=tmp_path, noise=noise)  # the same run resumes


def test_the_shape_comes_from_the_schedule_and_another_models_schedule_is_warned_about():
    model = TinyVelocity()
    sched = bf.optimal_schedules(model, (2,), 2, bf.SearchSettings(grid=10, num_samples=8))[2]
    assert sched.shape == (2,) and sched.fingerprint == bf.model_fingerprint(model)
    fast = {k: v for k, v in FAST.items() if k != "shape"}
    student = _straighten(model, sched, **fast)  # no shape=: the schedule's
    assert student(torch.zeros(3, 2), torch.zeros(3)).shape == (3, 2)
    with pytest.warns(UserWarning, match="searched on another model"):
        _straighten(TinyVelocity(seed=1), sched, **fast)


# ------------------------------------------------------------------------------------------------- LoRA


@needs_peft
def test_lora_runs_are_equal_for_a_seed_and_leave_the_global_generator_alone():
    """peft drew the adapters from torch's global generator: two runs in one process differed (main)."""
    model, sched = TinyVelocity(hidden=32), _schedule(10, [0, 5, 10])
    lora = {**FAST, "lora_rank": 2, "lr": 1e-2, "merge": False}
    state = torch.get_rng_state()
    first = _weights(_straighten(model, sched, **lora))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator: neither read nor advanced
    torch.manual_seed(123)  # whatever the global generator holds
    second = _weights(_straighten(model, sched, **lora))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    other = _weights(_straighten(model, sched, **lora, seed=1))
    assert any(not torch.equal(first[k], other[k]) for k in first if "lora_A" in k)  # the seed draws them
    fresh = add_lora(TinyVelocity(hidden=32), 2, seed=0)
    drawn = [p.detach() for n, p in fresh.named_parameters() if "lora_A" in n]
    bound = 1.0 / math.sqrt(3)  # peft's init, kaiming-uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))
    assert float(drawn[0].abs().max()) <= bound and float(drawn[0].std()) > 0.2 * bound
    assert all(not p.detach().any() for n, p in fresh.named_parameters() if "lora_B" in n)


@needs_peft
def test_lora_trains_only_adapters_and_merging_keeps_the_outputs():
    model = TinyVelocity(hidden=32)
    sched = _schedule(10, [0, 5, 10])
    adapted, stats = _straighten(
        model, sched, **FAST, lora_rank=2, lr=1e-2, ema=0.0, merge=False, return_stats=True
    )
    assert stats.trained_params == 2 * (3 + 32) + 2 * (32 + 2)  # r * (in + out) per adapted Linear
    assert 0.0 < stats.trained_share < 1.0
    names = {n for n, _ in adapted.named_parameters()}
    assert any("lora_B" in n for n in names)
    lora_b = [p for n, p in adapted.named_parameters() if "lora_B" in n]
    assert any(float(p.abs().max()) > 0 for p in lora_b)  # the adapters moved
    frozen = {n.replace("base_layer.", ""): p for n, p in adapted.named_parameters() if "lora_" not in n}
    for key, value in model.named_parameters():  # the base weights did not
        match = [p for n, p in frozen.items() if n.endswith("." + key)]
        assert len(match) == 1 and torch.equal(match[0], value)
    x, t = torch.randn(7, 2), torch.rand(7)
    with torch.no_grad():
        before = adapted(x, t)
        merged = bf.merge_lora(adapted)
        after = merged(x, t)
    assert isinstance(merged, TinyVelocity)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    assert not torch.equal(merged.net[0].weight, model.net[0].weight)


@needs_peft
def test_lora_on_the_bundled_dit_targets_attention_mlp_modulation_and_head():
    from boss_fast.models import DiT

    dit = DiT(hidden=16, depth=1, heads=2)
    peft_model = add_lora(dit, 4)
    adapted = {n.removesuffix(".lora_A") for n, _ in peft_model.named_modules() if n.endswith("lora_A")}
    # qkv, proj, mlp.0, mlp.2 and the adaLN modulation of the one block, the final modulation, the head
    wanted = ["attn.qkv", "attn.proj", "mlp.0", "mlp.2", "0.adaLN_modulation.1", "final.adaLN_modulation.1"]
    assert len(adapted) == 7 and all(any(n.endswith(w) for n in adapted) for w in [*wanted, ".head"])
    assert not any("t_embedder" in n or "patch_embed" in n for n in adapted)


@needs_peft
def test_a_lora_request_matching_no_module_is_refused():
    with pytest.raises(ValueError, match="match no module"):
        _straighten(TinyVelocity(), _schedule(10, [0, 5, 10]), **FAST, lora_rank=2, lora_targets=["nope"])


# ------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_with_a_clear_error():
    model = TinyVelocity()
    sched = _schedule(10, [0, 5, 10])
    with pytest.raises(ValueError, match="grid of 11 points"):
        _straighten(model, sched, **{**FAST, "grid": 100})
    with pytest.raises(ValueError, match="'euler' teacher"):
        _straighten(model, sched, **FAST, solver="heun")
    with pytest.raises(TypeError, match="must be a boss_fast.Schedule"):
        _straighten(model, [0.0, 0.5, 1.0], **FAST)
    with pytest.raises(TypeError, match="must be a boss_fast.Schedule"):
        straightening_pairs(model, 1.0 - sched.times, torch.randn(2, 2), grid=10)
    with pytest.raises(TypeError, match="cache_dir needs the teacher as an nn.Module"):
        straightening_pairs(lambda x, t: x, sched, torch.randn(2, 2), grid=10, cache_dir="unused")
    with pytest.raises(ValueError, match="iters must be >= 1"):
        _straighten(model, sched, **{**FAST, "iters": 0})

    class Squash(TinyVelocity):
        def forward(self, x, t):
            return super().forward(x, t)[:, :1]

    with pytest.raises(ValueError, match="differs from its input"):
        _straighten(Squash(), sched, **FAST)
    with pytest.raises(ValueError, match="pass shape="):
        _straighten(model, sched, **{k: v for k, v in FAST.items() if k != "shape"})


# -------------------------------------------------------------------------------------------- settings

BAD_SETTINGS = [
    ("num_pairs", 0, ValueError),
    ("num_pairs", 2.5, TypeError),
    ("grid", 0, ValueError),
    ("grid", "100", ValueError),
    ("grid", (0.0, 0.7, 0.5), ValueError),
    ("solver", "rk45", ValueError),
    ("teacher_mode", "fast", ValueError),
    ("pair_batch_size", 0, ValueError),
    ("iters", 0, ValueError),
    ("iters", True, TypeError),
    ("batch_size", -1, ValueError),
    ("lr", 0.0, ValueError),
    ("lr", float("nan"), ValueError),
    ("lr", "2e-4", TypeError),
    ("warmup", -1, ValueError),
    ("ema", 1.0, ValueError),
    ("ema", -0.1, ValueError),
    ("ema_warmup", 1, TypeError),
    ("loss", "l1", ValueError),
    ("normalize", "yes", TypeError),
    ("seed", -1, ValueError),
    ("seed", 2**64, ValueError),  # 2**70 was accepted, then torch.Generator.manual_seed overflowed
    ("checkpoint_every", 0, ValueError),
    ("lora_rank", 0, ValueError),
    ("lora_targets", [], TypeError),
    ("lora_targets", ["qkv", 3], TypeError),
    ("lora_targets", "(", ValueError),  # accepted, then re.error once the teacher had run
    ("lora_alpha", 0.0, ValueError),
    ("merge", None, TypeError),
    ("memory", {"in_place": True}, TypeError),
    ("pair_steps", 0, ValueError),
    ("pair_steps", 2.0, TypeError),
    ("pair_solver", "rk45", ValueError),
]


@pytest.mark.parametrize(
    ("name", "value", "error"), BAD_SETTINGS, ids=[f"{n}={v!r}" for n, v, _ in BAD_SETTINGS]
)
def test_a_bad_setting_is_refused_naming_its_field(name, value, error):
    with pytest.raises(error, match=rf"StraightenSettings\.{name}\b"):
        StraightenSettings(**{name: value})


def test_seeds_and_regex_targets_say_what_they_take():
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\^64 - 1\].*got 1180591620717411303424"):
        StraightenSettings(seed=2**70)
    assert StraightenSettings(seed=2**64 - 1).seed == 2**64 - 1  # the largest torch.Generator seed
    with pytest.raises(ValueError, match=r"lora_targets '\(' is not a regular expression"):
        StraightenSettings(lora_targets="(")
    assert StraightenSettings(lora_targets=r"blocks\.\d+\.qkv").lora_targets == r"blocks\.\d+\.qkv"


def test_every_setting_field_has_a_refusal_case():
    checked = {name for name, _, _ in BAD_SETTINGS}
    assert checked == {f.name for f in dataclasses.fields(StraightenSettings)}


def test_settings_are_frozen_normalised_and_hashable():
    settings = StraightenSettings(grid=np.linspace(0.0, 1.0, 5), lora_targets=["qkv"], lr=1, lora_alpha=2)
    assert settings.grid == (0.0, 0.25, 0.5, 0.75, 1.0) and settings.lora_targets == ("qkv",)
    assert type(settings.lr) is float and type(settings.lora_alpha) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.iters = 5
    assert hash(settings) == hash(dataclasses.replace(settings))  # equal settings, one hash
    assert StraightenSettings(grid=np.int64(10)).grid == 10


def test_lr_and_lora_alpha_default_by_the_kind_of_run_and_given_values_are_kept():
    assert StraightenSettings().lr == FULL_LR == 2e-4 and StraightenSettings().lora_alpha is None
    lora = StraightenSettings(lora_rank=8)
    assert lora.lr == LORA_LR != FULL_LR and lora.lora_alpha == LORA_ALPHA_PER_RANK * 8
    given = StraightenSettings(lora_rank=8, lr=FULL_LR, lora_alpha=8)
    assert (given.lr, given.lora_alpha) == (FULL_LR, 8.0)
    assert StraightenSettings(lr=1e-3).lr == 1e-3
    # Resolved at construction: replace keeps the values (documented), new settings resolve again.
    assert dataclasses.replace(lora, lora_rank=None).lr == LORA_LR
    with pytest.raises(ValueError, match=r"StraightenSettings\.teacher_mode"):
        StraightenSettings(pair_solver="dopri5", teacher_mode="eager")


@needs_peft
def test_the_default_lora_scale_is_the_one_trained(tmp_path):
    sched = _schedule(10, [0, 5, 10])
    _, stats = _straighten(TinyVelocity(), sched, **FAST, lora_rank=2, merge=False, return_stats=True)
    student = _straighten(TinyVelocity(), sched, **FAST, lora_rank=2, merge=False)
    layer = next(m for m in student.modules() if hasattr(m, "scaling"))
    assert layer.scaling["default"] == pytest.approx(LORA_ALPHA_PER_RANK)  # alpha / rank
    assert stats.trained_params == 2 * (3 + 16) + 2 * (16 + 2)  # rank 2 on both Linear layers


def test_settings_other_than_straighten_settings_are_refused():
    with pytest.raises(TypeError, match="settings must be a StraightenSettings"):
        straighten(TinyVelocity(), _schedule(10, [0, 5, 10]), settings={"iters": 2})


def test_return_stats_gives_the_same_module_and_what_the_run_did():
    sched = _schedule(10, [0, 5, 10])
    plain = _straighten(TinyVelocity(), sched, **FAST)
    student, stats = _straighten(TinyVelocity(), sched, **FAST, return_stats=True)
    assert isinstance(student, TinyVelocity) and not isinstance(plain, tuple)
    expected = _weights(plain)
    assert all(torch.equal(expected[k], v) for k, v in _weights(student).items())  # bit for bit
    assert stats.steps == FAST["iters"] and len(stats.losses) == FAST["iters"]
    total = sum(p.numel() for p in TinyVelocity().parameters())
    assert stats.trained_params == stats.total_params == total and stats.trained_share == 1.0


# ------------------------------------------------------------------------------------------------- DDP

WORLD = 2
DDP_KW = dict(num_pairs=12, grid=8, iters=5, batch_size=8, warmup=2, ema=0.5, progress=False, shape=(2,))


def _ddp_model() -> nn.Module:
    return TinyVelocity().double()


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        student = _straighten(_ddp_model(), _schedule(8, [0, 3, 8]), **DDP_KW)
        torch.save(_weights(student), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_on_two_gloo_ranks_matches_one_process(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    single = _weights(_straighten(_ddp_model(), _schedule(8, [0, 3, 8]), **DDP_KW))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for key, value in single.items():
        assert torch.equal(ranks[0][key], ranks[1][key])
        # the same gradient summed in two halves: float64 rounding only
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_straighten_writes_loadable_weights(tmp_path, capsys):
    from boss_fast.cli import main
    from boss_fast.models import DiT, read_weights

    sched = bf.Schedule(times=uniform_grid(10)[[0, 4, 10]], indices=np.array([0, 4, 10]), cost=0.0,
                        grid=uniform_grid(10))  # fmt: skip
    sched.save(tmp_path / "s.json")
    out = tmp_path / "w.safetensors"
    argv = ["straighten", "--model", "digits_dit", "--schedule", str(tmp_path / "s.json"), "--iters", "2"]
    argv += ["--num-pairs", "4", "--batch-size", "4", "--warmup", "1", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    tensors, config, meta = read_weights(out, name="digits_dit", script="-")
    assert meta["boss_fast.start"] == "zero"  # the schedule's start rule, beside its times
    net = DiT(**config)
    net.load_state_dict(tensors)
    assert "weights written" in capsys.readouterr().out
    bad = ["straighten", "--model", "digits_dit", "--schedule", str(tmp_path / "s.json"), "--grid", "100"]
    assert main([*bad, "--out", str(out)]) == 2
    # boss-fast sample runs the student: the same samples as bf.sample with the student's weights.
    smp = ["sample", "--model", "digits_dit", "--schedule", str(tmp_path / "s.json"), "--num", "3"]
    assert main([*smp, "--weights", str(out), "--out", str(tmp_path / "x.npy")]) == 0
    assert main([*smp, "--out", str(tmp_path / "teacher.npy")]) == 0
    noise = bf.seeded_noise((1, 8, 8), 0, 3, seed=0)
    student = bf.sample(net.eval(), noise, sched).numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), student)
    assert not np.array_equal(np.load(tmp_path / "teacher.npy"), student)
    wrong = tmp_path / "wrong.safetensors"
    wrong.write_bytes(b"not a safetensors file")
    assert main([*smp, "--weights", str(wrong), "--out", str(tmp_path / "y.npy")]) == 2
    assert "corrupt or unreadable" in capsys.readouterr().err


def test_demo_with_straighten_adds_rows(tmp_path):
    from boss_fast.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        out=str(tmp_path / "rep"),
        search=bf.SearchSettings(grid=20, num_samples=16, batch_size=16),
        models=("digits_dit",),
        max_nfe=2,
        eval_samples=16,
        rtol=1e-3,
        atol=1e-3,
        bootstrap=20,
        fd_bootstrap=10,
        progress=False,
        grid_nfes=(2,),
        straighten=StraightenSettings(num_pairs=8, grid=20, iters=2, warmup=2, ema=0.99),
    )
    summary = run_demo(cfg)
    rows = summary["straightened"]  # NFE 4 > max_nfe is skipped; both objectives, each its own teacher
    assert [(r["nfe"], r["teacher"]) for r in rows] == [(2, "euler"), (2, "heun")]
    assert all(np.isfinite(r["fd"]) and np.isfinite(r["schedule_fd"]) for r in rows)
    assert "straightened for the local and the global steps" in (tmp_path / "rep" / "results.md").read_text()


# From test_straighten_memory.py: Straightening a large model: no frozen copy, in place, gradient
# checkpointing, autocast, and pairs and

needs_peft_MEMORY = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft not installed")


FAST_MEMORY = dict(num_pairs=8, grid=8, iters=3, batch_size=4, warmup=0, lr=1e-2, progress=False)


def _dit(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    net = DiT(input_size=4, patch_size=2, in_channels=1, hidden=16, depth=2, heads=2)
    for p in net.parameters():  # adaLN-Zero starts at 0: random weights so every block does work
        nn.init.normal_(p, std=0.1)
    return net


def _schedule_MEMORY(n: int = 8, indices=(0, 3, 8), shape=(1, 4, 4)) -> bf.Schedule:
    grid = uniform_grid(n)
    idx = np.asarray(indices)
    return bf.Schedule(times=grid[idx], indices=idx, cost=0.0, grid=grid, shape=shape)


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Bank(nn.Module):
    """v = W x + c[m mod P] for noise row m; ``calls`` records (x, rows) of every training-time call."""

    def __init__(self, p: int = 3, dim: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(dim, dim, dtype=torch.float64)
        self.register_buffer("bank", 3.0 * torch.randn(p, dim, dtype=torch.float64))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def entry(self, x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.calls.append((x.detach().clone(), rows.clone()))
        return self.lin(x) + self.bank[rows % len(self.bank)]

    def for_rows(self, rows: torch.Tensor):
        return lambda x, t: self.entry(x, t, rows)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.entry(x, t, torch.arange(len(x)))


# ----------------------------------------------------------------------------------------- the bank


def test_pairs_pair_noise_m_with_conditioning_m_mod_p_whatever_the_batching():
    bank, sched = Bank(), _schedule_MEMORY(shape=(2,))
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


def test_training_steps_see_each_pairs_own_conditioning():
    bank, sched = Bank(), _schedule_MEMORY(shape=(2,))
    noise = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _straighten(bank, sched, noise=noise, **{**FAST_MEMORY, "num_pairs": 6}, ema=0.0,
                memory=StraightenMemory(in_place=True))  # fmt: skip
    pairs = straightening_pairs(Bank(), sched, noise, grid=8)  # the same teacher, untrained
    k = sched.steps
    assert len(bank.calls) == FAST_MEMORY["iters"]  # every step went through for_rows
    for x, rows in bank.calls:
        for xi, m in zip(x, rows.tolist(), strict=True):
            starts = pairs.start[m * k : (m + 1) * k]
            assert bool((starts == xi).all(dim=1).any()), f"a pair of noise {m} trained with another entry"


# ---------------------------------------------------------------------------------------- no copies


@pytest.mark.parametrize("lora", [None, pytest.param(2, marks=needs_peft_MEMORY)])
def test_one_copy_by_default_none_in_place_and_the_same_result(monkeypatch, lora):
    sched = _schedule_MEMORY()
    copies = []
    real = copy.deepcopy

    def counting(obj, memo=None):
        if isinstance(obj, DiT):
            copies.append(obj)
        return real(obj, memo)

    monkeypatch.setattr(copy, "deepcopy", counting)
    model = _dit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    student = _straighten(model, sched, **FAST_MEMORY, lora_rank=lora)
    assert len(copies) == 1  # the student; the pairs' teacher is the student before training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # model not modified
    copies.clear()
    in_place = _dit()
    result = _straighten(
        in_place, sched, **FAST_MEMORY, lora_rank=lora, memory=StraightenMemory(in_place=True)
    )
    assert copies == []
    assert _same(result, student)  # bit for bit the default's result
    assert result is in_place or lora is not None
    if lora is not None:  # merged into the model's own weights
        assert result.blocks[0].attn.qkv.weight.data_ptr() == in_place.blocks[0].attn.qkv.weight.data_ptr()


# --------------------------------------------------------------------------- gradient checkpointing


@pytest.mark.parametrize("lora", [None, pytest.param(2, marks=needs_peft_MEMORY)])
def test_gradient_checkpointing_recomputes_the_blocks_and_gives_the_same_weights(lora):
    sched = _schedule_MEMORY()
    plain = _straighten(_dit(), sched, **FAST_MEMORY, lora_rank=lora)
    model = _dit()
    counts = {"attn": 0}

    def count(module, args, out):
        if torch.is_grad_enabled():
            counts["attn"] += 1

    model.blocks[0].attn.register_forward_hook(count)
    memory = StraightenMemory(in_place=True, gradient_checkpointing=True)
    result = _straighten(model, sched, **FAST_MEMORY, lora_rank=lora, memory=memory)
    assert counts["attn"] == 2 * FAST_MEMORY["iters"]  # forward, then again in the backward pass
    assert all("forward" not in vars(block) for block in model.blocks)  # switched off afterwards
    for (name, a), b in zip(plain.state_dict().items(), result.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_gradient_checkpointing_without_blocks_is_refused():
    model = _Plain()
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        _straighten(
            model,
            _schedule_MEMORY(shape=(2,)),
            **FAST_MEMORY,
            memory=StraightenMemory(gradient_checkpointing=True),
        )


class _Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


# -------------------------------------------------------------------------------------------- autocast


def test_bf16_autocast_trains_near_fp32_and_is_part_of_the_checkpoint(tmp_path):
    sched = _schedule_MEMORY()
    plain = _straighten(_dit(), sched, **FAST_MEMORY)
    bf16_memory = StraightenMemory(autocast=torch.bfloat16)
    bf16, stats = _straighten(
        _dit(), sched, **FAST_MEMORY, checkpoint_dir=tmp_path, memory=bf16_memory, return_stats=True
    )
    diffs = [float((a - b).abs().max()) for a, b in zip(plain.parameters(), bf16.parameters(), strict=True)]
    assert 0 < max(diffs) < 0.05  # bf16 rounding (8 bits of mantissa) moved the steps, a little
    assert all(np.isfinite(stats.losses))
    with pytest.raises(ValueError, match="autocast"):  # resuming without it is another run
        _straighten(_dit(), sched, **{**FAST_MEMORY, "iters": 4}, checkpoint_dir=tmp_path)


@pytest.mark.parametrize(
    ("fields", "error"),
    [({"autocast": torch.float64}, ValueError), ({"in_place": 1}, TypeError),
     ({"gradient_checkpointing": "yes"}, TypeError)],
)  # fmt: skip
def test_bad_memory_settings_are_refused(fields, error):
    with pytest.raises(error, match="StraightenMemory"):
        StraightenMemory(**fields)
    with pytest.raises(TypeError, match="memory must be a StraightenMemory"):
        _straighten(_dit(), _schedule_MEMORY(), **FAST_MEMORY, memory=fields)


# From test_sampler.py


def test_straightening_pairs_on_the_sampler(digits_dit):
    grid = bf.uniform_grid(8)
    sched = bf.schedules_from_cost(np.ones((9, 9)), 3, grid=grid)[3]
    noise = torch.randn(5, 1, 8, 8)
    plain = straightening_pairs(digits_dit, sched, noise, grid=8, batch_size=2)
    eager = straightening_pairs(digits_dit, sched, noise, grid=8, batch_size=2, mode="eager")
    for name in ("start", "end", "t_start", "t_end"):
        assert torch.equal(getattr(eager, name), getattr(plain, name)), name
