"""Straightening runs (boss_fast.straighten.train): training semantics, bad input, DDP, the CLI and the demo,
banks, no copies, gradient checkpointing, autocast, each step's inputs (the sampler's or the teacher's)."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _straightening import (
    FAST,
    FAST_DIT,
    Bank,
    RotationFlow,
    TinyVelocity,
    dit_schedule,
    needs_peft,
    run_straighten,
    schedule_at,
    small_dit,
    weights_of,
)
from torch import nn

import boss_fast as bf
from boss_fast.grids import uniform_grid
from boss_fast.models.dit import DiT
from boss_fast.straighten import (
    StraightenMemory,
    StraightenSettings,
    pair_loss,
    straighten,
    straightening_pairs,
)
from boss_fast.straighten.train import _Banked, _resolve_run, _step_batch
from boss_fast.trajectories import teacher_trajectory


def _full_loss(model: nn.Module, teacher: nn.Module, sched: bf.Schedule, noise: torch.Tensor) -> float:
    p = straightening_pairs(teacher, sched, noise, grid=sched.grid)
    target = (p.end - p.start) / (p.t_end - p.t_start)[:, None]
    with torch.no_grad():
        return float(pair_loss(model(p.start, p.t_start), target).mean())


def test_one_training_step_reduces_the_loss():
    model = RotationFlow()
    sched = schedule_at(10, [0, 5, 10])
    noise = bf.seeded_noise((2,), 0, 16, seed=0, dtype=torch.float64)
    kwargs = {**FAST, "iters": 1, "warmup": 0, "batch_size": 64}
    student = run_straighten(model, sched, **kwargs, lr=1e-2, ema=0.0)
    assert _full_loss(student, model, sched, noise) < 0.95 * _full_loss(model, model, sched, noise)
    assert not any(p.requires_grad for p in student.parameters()) and not student.training
    assert torch.equal(model.lin.weight, RotationFlow().lin.weight)  # the input model is not modified


def _one_step_errors_before_and_after(model: nn.Module, sched: bf.Schedule) -> tuple[float, float]:
    """The K-step sampler's mean squared endpoint error against the teacher (run from the noise at t = 0 on
    the schedule's grid) over 256 noises, before and after straightening for ``sched`` (300 iterations)."""
    noise = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    teacher_end = teacher_trajectory(model, noise, sched.grid).states[-1]

    def one_step_error(m: nn.Module) -> float:
        return float((bf.sample(m, noise, sched) - teacher_end).square().sum(1).mean())

    student = run_straighten(
        model, sched, num_pairs=256, grid=50, iters=300, batch_size=64, lr=2e-2, warmup=10, ema=0.9,
        progress=False, shape=(2,),
    )  # fmt: skip
    return one_step_error(model), one_step_error(student)


def test_straightening_a_one_step_schedule_on_a_rotation_flow_drives_its_error_down():
    model = RotationFlow()
    sched = schedule_at(50, [0, 50])
    before, after = _one_step_errors_before_and_after(model, sched)
    assert before > 0.3  # |(I + A - R(1.2)) x|^2: one Euler step cuts the arc's corner badly
    assert after < 0.01 * before


def test_a_schedule_that_starts_later_is_straightened_from_where_its_sampler_starts():
    """A 1-step schedule from t = 0.4 (rule "noise"): the student learns the jump from the noise itself at
    0.4 to the teacher's endpoint (run from the noise at 0), so bf.sample, which starts there, lands on it."""
    model = RotationFlow()
    grid = uniform_grid(50)
    sched = bf.Schedule(times=grid[[20, 50]], indices=np.array([20, 50]), cost=0.0, grid=grid, start="noise")
    before, after = _one_step_errors_before_and_after(model, sched)
    assert before > 0.3
    assert after < 0.01 * before


def test_ema_is_the_average_of_the_trained_weights():
    model = TinyVelocity()
    sched = schedule_at(10, [0, 5, 10])
    last = run_straighten(model, sched, **{**FAST, "iters": 1}, ema=0.0)  # ema 0: the last weights
    half = run_straighten(model, sched, **{**FAST, "iters": 1}, ema=0.5, ema_warmup=False)
    warm = run_straighten(model, sched, **{**FAST, "iters": 1}, ema=0.5)  # step 0: decay min(0.5, 1 / 10)
    for key, w0 in model.state_dict().items():
        w1 = last.state_dict()[key]
        torch.testing.assert_close(half.state_dict()[key], 0.5 * (w0 + w1))
        torch.testing.assert_close(warm.state_dict()[key], 0.1 * w0 + 0.9 * w1)


def test_the_shape_comes_from_the_schedule_and_another_models_schedule_is_warned_about():
    model = TinyVelocity()
    sched = bf.optimal_schedules(model, (2,), 2, bf.SearchSettings(grid=10, num_samples=8))[2]
    assert sched.shape == (2,) and sched.fingerprint == bf.model_fingerprint(model)
    fast = {k: v for k, v in FAST.items() if k != "shape"}
    student = run_straighten(model, sched, **fast)  # no shape=: the schedule's
    assert student(torch.zeros(3, 2), torch.zeros(3)).shape == (3, 2)
    with pytest.warns(UserWarning, match="searched on another model"):
        run_straighten(TinyVelocity(seed=1), sched, **fast)


def test_return_stats_gives_the_same_module_and_what_the_run_did():
    sched = schedule_at(10, [0, 5, 10])
    plain = run_straighten(TinyVelocity(), sched, **FAST)
    student, stats = run_straighten(TinyVelocity(), sched, **FAST, return_stats=True)
    assert isinstance(student, TinyVelocity) and not isinstance(plain, tuple)
    expected = weights_of(plain)
    assert all(torch.equal(expected[k], v) for k, v in weights_of(student).items())  # bit for bit
    assert stats.steps == FAST["iters"] and len(stats.losses) == FAST["iters"]
    total = sum(p.numel() for p in TinyVelocity().parameters())
    assert stats.trained_params == stats.total_params == total and stats.trained_share == 1.0


# -------------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_with_a_clear_error():
    model = TinyVelocity()
    sched = schedule_at(10, [0, 5, 10])
    with pytest.raises(ValueError, match="grid of 11 points"):
        run_straighten(model, sched, **{**FAST, "grid": 100})
    with pytest.raises(ValueError, match="'euler' teacher"):
        run_straighten(model, sched, **FAST, solver="heun")
    with pytest.raises(TypeError, match="must be a boss_fast.Schedule"):
        run_straighten(model, [0.0, 0.5, 1.0], **FAST)
    with pytest.raises(TypeError, match="must be a boss_fast.Schedule"):
        straightening_pairs(model, 1.0 - sched.times, torch.randn(2, 2), grid=10)
    with pytest.raises(TypeError, match="cache_dir needs the teacher as an nn.Module"):
        straightening_pairs(lambda x, t: x, sched, torch.randn(2, 2), grid=10, cache_dir="unused")
    with pytest.raises(ValueError, match="iters must be >= 1"):
        run_straighten(model, sched, **{**FAST, "iters": 0})

    class Squash(TinyVelocity):
        def forward(self, x, t):
            return super().forward(x, t)[:, :1]

    with pytest.raises(ValueError, match="differs from its input"):
        run_straighten(Squash(), sched, **FAST)
    with pytest.raises(ValueError, match="pass shape="):
        run_straighten(model, sched, **{k: v for k, v in FAST.items() if k != "shape"})


def test_settings_other_than_straighten_settings_are_refused():
    with pytest.raises(TypeError, match="settings must be a StraightenSettings"):
        straighten(TinyVelocity(), schedule_at(10, [0, 5, 10]), settings={"iters": 2})


# -------------------------------------------------------------------------------------------------------- DDP


WORLD = 2


DDP_KW = dict(num_pairs=12, grid=8, iters=5, batch_size=8, warmup=2, ema=0.5, progress=False, shape=(2,))


def _ddp_model() -> nn.Module:
    return TinyVelocity().double()


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        student = run_straighten(_ddp_model(), schedule_at(8, [0, 3, 8]), **DDP_KW)
        torch.save(weights_of(student), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_on_two_gloo_ranks_matches_one_process(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    single = weights_of(run_straighten(_ddp_model(), schedule_at(8, [0, 3, 8]), **DDP_KW))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for key, value in single.items():
        assert torch.equal(ranks[0][key], ranks[1][key])
        # the same gradient summed in two halves: float64 rounding only
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------- CLI and demo


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


# --------------------------------------------------------------------------------------------------- the bank


def test_training_steps_see_each_pairs_own_conditioning():
    bank, sched = Bank(), dit_schedule(shape=(2,))
    noise = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    run_straighten(bank, sched, noise=noise, **{**FAST_DIT, "num_pairs": 6}, ema=0.0, inputs="teacher",
                memory=StraightenMemory(in_place=True), pair_steps=None, pair_solver=None)  # fmt: skip
    pairs = straightening_pairs(Bank(), sched, noise, grid=8)  # the same (schedule's own) teacher, untrained
    k = sched.steps
    assert len(bank.calls) == FAST_DIT["iters"]  # every step went through for_rows
    for x, rows in bank.calls:
        for xi, m in zip(x, rows.tolist(), strict=True):
            starts = pairs.start[m * k : (m + 1) * k]
            assert bool((starts == xi).all(dim=1).any()), f"a pair of noise {m} trained with another entry"


# -------------------------------------------------------------------------------------------------- no copies


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("lora", [None, pytest.param(2, marks=needs_peft)])
def test_one_copy_by_default_none_in_place_and_the_same_result(monkeypatch, lora):
    sched = dit_schedule()
    copies = []
    real = copy.deepcopy

    def counting(obj, memo=None):
        if isinstance(obj, DiT):
            copies.append(obj)
        return real(obj, memo)

    monkeypatch.setattr(copy, "deepcopy", counting)
    model = small_dit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    student = run_straighten(model, sched, **FAST_DIT, lora_rank=lora)
    assert len(copies) == 1  # the student; the pairs' teacher is the student before training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # model not modified
    copies.clear()
    in_place = small_dit()
    result = run_straighten(
        in_place, sched, **FAST_DIT, lora_rank=lora, memory=StraightenMemory(in_place=True)
    )
    assert copies == []
    assert _same(result, student)  # bit for bit the default's result
    assert result is in_place or lora is not None
    if lora is not None:  # merged into the model's own weights
        assert result.blocks[0].attn.qkv.weight.data_ptr() == in_place.blocks[0].attn.qkv.weight.data_ptr()


# ------------------------------------------------------------------------------------- gradient checkpointing


@pytest.mark.parametrize("lora", [None, pytest.param(2, marks=needs_peft)])
def test_gradient_checkpointing_recomputes_the_blocks_and_gives_the_same_weights(lora):
    sched = dit_schedule()
    plain = run_straighten(small_dit(), sched, **FAST_DIT, lora_rank=lora)
    model = small_dit()
    counts = {"attn": 0}

    def count(module, args, out):
        if torch.is_grad_enabled():
            counts["attn"] += 1

    model.blocks[0].attn.register_forward_hook(count)
    memory = StraightenMemory(in_place=True, gradient_checkpointing=True)
    result = run_straighten(model, sched, **FAST_DIT, lora_rank=lora, memory=memory)
    assert counts["attn"] == 2 * FAST_DIT["iters"]  # forward, then again in the backward pass
    assert all("forward" not in vars(block) for block in model.blocks)  # switched off afterwards
    for (name, a), b in zip(plain.state_dict().items(), result.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_gradient_checkpointing_without_blocks_is_refused():
    model = _Plain()
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        run_straighten(
            model,
            dit_schedule(shape=(2,)),
            **FAST_DIT,
            memory=StraightenMemory(gradient_checkpointing=True),
        )


class _Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


# --------------------------------------------------------------------------------------------------- autocast


def test_bf16_autocast_trains_near_fp32_and_is_part_of_the_checkpoint(tmp_path):
    sched = dit_schedule()
    plain = run_straighten(small_dit(), sched, **FAST_DIT)
    bf16_memory = StraightenMemory(autocast=torch.bfloat16)
    bf16, stats = run_straighten(
        small_dit(), sched, **FAST_DIT, checkpoint_dir=tmp_path, memory=bf16_memory, return_stats=True
    )
    diffs = [float((a - b).abs().max()) for a, b in zip(plain.parameters(), bf16.parameters(), strict=True)]
    assert 0 < max(diffs) < 0.05  # bf16 rounding (8 bits of mantissa) moved the steps, a little
    assert all(np.isfinite(stats.losses))
    with pytest.raises(ValueError, match="autocast"):  # resuming without it is another run
        run_straighten(small_dit(), sched, **{**FAST_DIT, "iters": 4}, checkpoint_dir=tmp_path)


# -------------------------------------------------------------------- inputs: the sampler's or the teacher's
# What they buy is measured on the digits DiT (scripts/straighten_digits.py --inputs), not here.


def _by_hand(velocity, pairs, sched: bf.Schedule, row: int) -> torch.Tensor:
    """Row ``row``'s sampler state, step by step: Euler from its noise's start state over tau_0 .. tau_k."""
    k, m = row % sched.steps, row // sched.steps
    x = pairs.start[m * sched.steps : m * sched.steps + 1]
    for j in range(k):
        t = torch.full((1,), float(sched.times[j]), dtype=x.dtype)
        x = x + float(sched.times[j + 1] - sched.times[j]) * velocity(x, t, m)
    return x[0]


@pytest.mark.parametrize("banked", [False, True])
def test_sampler_inputs_are_the_students_own_euler_states_and_targets_land_on_the_teacher(banked):
    model = Bank() if banked else TinyVelocity()
    if not banked:
        model = model.double()
    grid = uniform_grid(12)
    sched = bf.Schedule(times=grid[[2, 5, 9, 12]], indices=np.array([2, 5, 9, 12]), cost=0.0, grid=grid,
                        start="noise", shape=(2,))  # fmt: skip
    noise = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pairs = straightening_pairs(model, sched, noise, grid=grid)
    rows = torch.tensor([0, 1, 2, 5, 7, 8, 13, 14, 11, 3])  # every k, in no order, one row twice over noises
    trainer = _Banked(model, sched.steps) if banked else model

    def velocity(x, t, m):
        return model.for_rows(torch.tensor([m]))(x, t) if banked else model(x, t)

    got = {}
    for inputs in ("sampler", "teacher", None):
        settings = (
            StraightenSettings(grid=grid) if inputs is None else StraightenSettings(grid=grid, inputs=inputs)
        )
        got[inputs] = x, target = _step_batch(
            trainer, pairs, rows, _resolve_run(model, sched, settings, "cpu")
        )
        if inputs is None:  # the default
            break
        for i, r in enumerate(rows.tolist()):
            want = _by_hand(velocity, pairs, sched, r) if inputs == "sampler" else pairs.start[r]
            torch.testing.assert_close(x[i], want, rtol=1e-12, atol=1e-12)
            # one Euler step with the target velocity lands on the teacher's state at tau_{k+1}
            landed = x[i] + (pairs.t_end[r] - pairs.t_start[r]) * target[i]
            torch.testing.assert_close(landed, pairs.end[r], rtol=1e-12, atol=1e-12)
    assert torch.equal(got[None][0], got["sampler"][0]) and not torch.equal(
        got["sampler"][0], got["teacher"][0]
    )


def test_the_first_step_is_the_same_either_way():
    """With one step there is no earlier state: both inputs give the same training, bit for bit."""
    sched = schedule_at(10, [0, 10])
    a = run_straighten(TinyVelocity(), sched, **FAST, inputs="sampler")
    b = run_straighten(TinyVelocity(), sched, **FAST, inputs="teacher")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_a_checkpoint_of_the_other_inputs_is_refused_and_an_old_one_says_how_to_resume(tmp_path):
    sched = schedule_at(10, [0, 4, 10])
    run_straighten(TinyVelocity(), sched, **FAST, inputs="teacher", checkpoint_dir=tmp_path / "old")
    with pytest.raises(ValueError, match=r"other settings.*'inputs': \(None, 'sampler'\).*inputs='teacher'"):
        run_straighten(TinyVelocity(), sched, **{**FAST, "iters": 6}, checkpoint_dir=tmp_path / "old")
    _, stats = run_straighten(
        TinyVelocity(), sched, **{**FAST, "iters": 6}, inputs="teacher", checkpoint_dir=tmp_path / "old",
        return_stats=True,
    )  # fmt: skip
    assert stats.steps == 6
    run_straighten(TinyVelocity(), sched, **FAST, checkpoint_dir=tmp_path / "new")
    with pytest.raises(ValueError, match=r"'inputs': \('sampler', None\)") as info:
        run_straighten(TinyVelocity(), sched, **{**FAST, "iters": 6}, inputs="teacher",
                       checkpoint_dir=tmp_path / "new")  # fmt: skip
    assert "pass inputs" not in str(info.value)  # the hint is for checkpoints from before the option only


class _Count(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x, t):
        self.calls.append((len(x), torch.is_grad_enabled()))
        return self.model(x, t)


def test_the_sampler_states_cost_one_call_per_earlier_step_without_gradient():
    """Rows with k earlier steps cost k forward passes: one call per step j, as wide as the rows past it."""
    model = _Count(TinyVelocity().double())
    sched = schedule_at(10, [0, 3, 6, 8, 10])
    noise = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pairs = straightening_pairs(model, sched, noise, grid=10)
    run = _resolve_run(model, sched, StraightenSettings(grid=10), "cpu")
    rows = torch.tensor([0, 5, 6, 15, 3, 9, 12])  # k = 0, 1, 2, 3, 3, 1, 0
    model.calls.clear()
    with torch.enable_grad():
        x, target = _step_batch(model, pairs, rows, run)
    assert model.calls == [(5, False), (3, False), (2, False)]
    planned = _step_batch(model, pairs, rows, run, host_rows=rows.clone())  # planned from given host rows
    assert torch.equal(planned[0], x) and torch.equal(planned[1], target)
