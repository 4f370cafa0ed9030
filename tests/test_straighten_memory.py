"""Straightening a large model: no frozen copy, in place, gradient checkpointing, autocast, and pairs and
steps over a bank of conditionings (noise m with conditioning m mod P)."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

import boss_fast as bf
from boss_fast.grids import uniform_grid
from boss_fast.models.dit import DiT
from boss_fast.straighten import StraightenMemory, StraightenSettings, straighten, straightening_pairs
from boss_fast.trajectories import teacher_trajectory

needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft not installed")


SETTING_NAMES = {f.name for f in dataclasses.fields(StraightenSettings)}


def _straighten(model, sched, teacher=None, **kwargs):
    """``straighten`` with the keywords split: the settings' fields into a ``StraightenSettings``, the rest
    (shape, noise, progress, checkpoint_dir, ..., return_stats) passed as the run's keywords."""
    settings = StraightenSettings(**{k: v for k, v in kwargs.items() if k in SETTING_NAMES})
    run = {k: v for k, v in kwargs.items() if k not in SETTING_NAMES}
    return straighten(model, sched, teacher, settings, **run)


FAST = dict(num_pairs=8, grid=8, iters=3, batch_size=4, warmup=0, lr=1e-2, progress=False)


def _dit(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    net = DiT(input_size=4, patch_size=2, in_channels=1, hidden=16, depth=2, heads=2)
    for p in net.parameters():  # adaLN-Zero starts at 0: random weights so every block does work
        nn.init.normal_(p, std=0.1)
    return net


def _schedule(n: int = 8, indices=(0, 3, 8), shape=(1, 4, 4)) -> bf.Schedule:
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
    bank, sched = Bank(), _schedule(shape=(2,))
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
    bank, sched = Bank(), _schedule(shape=(2,))
    noise = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _straighten(bank, sched, noise=noise, **{**FAST, "num_pairs": 6}, ema=0.0,
                memory=StraightenMemory(in_place=True))  # fmt: skip
    pairs = straightening_pairs(Bank(), sched, noise, grid=8)  # the same teacher, untrained
    k = sched.steps
    assert len(bank.calls) == FAST["iters"]  # every step went through for_rows
    for x, rows in bank.calls:
        for xi, m in zip(x, rows.tolist(), strict=True):
            starts = pairs.start[m * k : (m + 1) * k]
            assert bool((starts == xi).all(dim=1).any()), f"a pair of noise {m} trained with another entry"


# ---------------------------------------------------------------------------------------- no copies


@pytest.mark.parametrize("lora", [None, pytest.param(2, marks=needs_peft)])
def test_one_copy_by_default_none_in_place_and_the_same_result(monkeypatch, lora):
    sched = _schedule()
    copies = []
    real = copy.deepcopy

    def counting(obj, memo=None):
        if isinstance(obj, DiT):
            copies.append(obj)
        return real(obj, memo)

    monkeypatch.setattr(copy, "deepcopy", counting)
    model = _dit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    student = _straighten(model, sched, **FAST, lora_rank=lora)
    assert len(copies) == 1  # the student; the pairs' teacher is the student before training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # model not modified
    copies.clear()
    in_place = _dit()
    result = _straighten(in_place, sched, **FAST, lora_rank=lora, memory=StraightenMemory(in_place=True))
    assert copies == []
    assert _same(result, student)  # bit for bit the default's result
    assert result is in_place or lora is not None
    if lora is not None:  # merged into the model's own weights
        assert result.blocks[0].attn.qkv.weight.data_ptr() == in_place.blocks[0].attn.qkv.weight.data_ptr()


# --------------------------------------------------------------------------- gradient checkpointing


@pytest.mark.parametrize("lora", [None, pytest.param(2, marks=needs_peft)])
def test_gradient_checkpointing_recomputes_the_blocks_and_gives_the_same_weights(lora):
    sched = _schedule()
    plain = _straighten(_dit(), sched, **FAST, lora_rank=lora)
    model = _dit()
    counts = {"attn": 0}

    def count(module, args, out):
        if torch.is_grad_enabled():
            counts["attn"] += 1

    model.blocks[0].attn.register_forward_hook(count)
    memory = StraightenMemory(in_place=True, gradient_checkpointing=True)
    result = _straighten(model, sched, **FAST, lora_rank=lora, memory=memory)
    assert counts["attn"] == 2 * FAST["iters"]  # forward, then again in the backward pass
    assert all("forward" not in vars(block) for block in model.blocks)  # switched off afterwards
    for (name, a), b in zip(plain.state_dict().items(), result.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_gradient_checkpointing_without_blocks_is_refused():
    model = _Plain()
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        _straighten(
            model, _schedule(shape=(2,)), **FAST, memory=StraightenMemory(gradient_checkpointing=True)
        )


class _Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


# -------------------------------------------------------------------------------------------- autocast


def test_bf16_autocast_trains_near_fp32_and_is_part_of_the_checkpoint(tmp_path):
    sched = _schedule()
    plain = _straighten(_dit(), sched, **FAST)
    bf16_memory = StraightenMemory(autocast=torch.bfloat16)
    bf16, stats = _straighten(
        _dit(), sched, **FAST, checkpoint_dir=tmp_path, memory=bf16_memory, return_stats=True
    )
    diffs = [float((a - b).abs().max()) for a, b in zip(plain.parameters(), bf16.parameters(), strict=True)]
    assert 0 < max(diffs) < 0.05  # bf16 rounding (8 bits of mantissa) moved the steps, a little
    assert all(np.isfinite(stats.losses))
    with pytest.raises(ValueError, match="autocast"):  # resuming without it is another run
        _straighten(_dit(), sched, **{**FAST, "iters": 4}, checkpoint_dir=tmp_path)


@pytest.mark.parametrize(
    ("fields", "error"),
    [({"autocast": torch.float64}, ValueError), ({"in_place": 1}, TypeError),
     ({"gradient_checkpointing": "yes"}, TypeError)],
)  # fmt: skip
def test_bad_memory_settings_are_refused(fields, error):
    with pytest.raises(error, match="StraightenMemory"):
        StraightenMemory(**fields)
    with pytest.raises(TypeError, match="memory must be a StraightenMemory"):
        _straighten(_dit(), _schedule(), **FAST, memory=fields)
