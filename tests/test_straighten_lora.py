"""LoRA straightening (boss_fast.straighten.lora): seeded adapters, only they train, merging, targets."""

from __future__ import annotations

import math

import pytest
import torch
from _straightening import FAST, TinyVelocity, needs_peft, run_straighten, schedule_at, weights_of

import boss_fast as bf
from boss_fast.straighten import LORA_ALPHA_PER_RANK, add_lora


@needs_peft
def test_lora_runs_are_equal_for_a_seed_and_leave_the_global_generator_alone():
    """peft drew the adapters from torch's global generator: two runs in one process differed (main)."""
    model, sched = TinyVelocity(hidden=32), schedule_at(10, [0, 5, 10])
    lora = {**FAST, "lora_rank": 2, "lr": 1e-2, "merge": False}
    state = torch.get_rng_state()
    first = weights_of(run_straighten(model, sched, **lora))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator: neither read nor advanced
    torch.manual_seed(123)  # whatever the global generator holds
    second = weights_of(run_straighten(model, sched, **lora))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    other = weights_of(run_straighten(model, sched, **lora, seed=1))
    assert any(not torch.equal(first[k], other[k]) for k in first if "lora_A" in k)  # the seed draws them
    fresh = add_lora(TinyVelocity(hidden=32), 2, seed=0)
    drawn = [p.detach() for n, p in fresh.named_parameters() if "lora_A" in n]
    bound = 1.0 / math.sqrt(3)  # peft's init, kaiming-uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))
    assert float(drawn[0].abs().max()) <= bound and float(drawn[0].std()) > 0.2 * bound
    assert all(not p.detach().any() for n, p in fresh.named_parameters() if "lora_B" in n)


@needs_peft
def test_lora_trains_only_adapters_and_merging_keeps_the_outputs():
    model = TinyVelocity(hidden=32)
    sched = schedule_at(10, [0, 5, 10])
    adapted, stats = run_straighten(
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
        run_straighten(
            TinyVelocity(), schedule_at(10, [0, 5, 10]), **FAST, lora_rank=2, lora_targets=["nope"]
        )


@needs_peft
def test_the_default_lora_scale_is_the_one_trained(tmp_path):
    sched = schedule_at(10, [0, 5, 10])
    _, stats = run_straighten(TinyVelocity(), sched, **FAST, lora_rank=2, merge=False, return_stats=True)
    student = run_straighten(TinyVelocity(), sched, **FAST, lora_rank=2, merge=False)
    layer = next(m for m in student.modules() if hasattr(m, "scaling"))
    assert layer.scaling["default"] == pytest.approx(LORA_ALPHA_PER_RANK)  # alpha / rank
    assert stats.trained_params == 2 * (3 + 16) + 2 * (16 + 2)  # rank 2 on both Linear layers
