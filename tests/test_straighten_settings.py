"""Straightening settings (boss_fast.straighten.settings): every field checked, defaults by kind of run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _straightening import FAST_DIT, dit_schedule, run_straighten, small_dit

from boss_fast.straighten import (
    FULL_LR,
    LORA_ALPHA_PER_RANK,
    LORA_LR,
    StraightenMemory,
    StraightenSettings,
)
from boss_fast.straighten.settings import PAIR_SOLVER, PAIR_STEPS

BAD_SETTINGS = [
    ("num_pairs", 0, ValueError),
    ("num_pairs", 2.5, TypeError),
    ("grid", 0, ValueError),
    ("grid", "100", ValueError),
    ("grid", (0.0, 0.7, 0.5), ValueError),
    ("solver", "rk45", ValueError),
    ("teacher_mode", "fast", ValueError),
    ("pair_batch_size", 0, ValueError),
    ("inputs", "student", ValueError),
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
    ("pair_spacing", "even", ValueError),
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
    with pytest.raises(ValueError, match=r"StraightenSettings\.pair_spacing 'adaptive'.*dopri5"):
        StraightenSettings(pair_steps=12, pair_solver="dopri5", pair_spacing="adaptive")
    with pytest.raises(ValueError, match=r"StraightenSettings\.pair_spacing 'adaptive'.*pair_steps=None"):
        StraightenSettings(pair_steps=None, pair_spacing="adaptive")  # the schedule's grid: nothing to cut


def test_the_pairs_default_teacher_and_the_published_one():
    """Default: Heun, PAIR_STEPS steps cut "adaptive"ly; pair_steps=None, pair_solver=None is BOSS's own
    teacher (the schedule's solver on its grid), where the spacing resolves to "uniform"."""
    cheap = StraightenSettings()
    assert (cheap.pair_steps, cheap.pair_solver, cheap.pair_spacing) == (PAIR_STEPS, PAIR_SOLVER, "adaptive")
    published = StraightenSettings(pair_steps=None, pair_solver=None)
    assert (published.pair_steps, published.pair_solver, published.pair_spacing) == (None, None, "uniform")
    assert StraightenSettings(pair_steps=50, pair_solver="dopri5").pair_spacing == "uniform"
    assert StraightenSettings(pair_steps=50, pair_spacing="uniform").pair_spacing == "uniform"  # kept


@pytest.mark.parametrize(
    ("fields", "error"),
    [({"autocast": torch.float64}, ValueError), ({"in_place": 1}, TypeError),
     ({"gradient_checkpointing": "yes"}, TypeError)],
)  # fmt: skip
def test_bad_memory_settings_are_refused(fields, error):
    with pytest.raises(error, match="StraightenMemory"):
        StraightenMemory(**fields)
    with pytest.raises(TypeError, match="memory must be a StraightenMemory"):
        run_straighten(small_dit(), dit_schedule(), **FAST_DIT, memory=fields)
