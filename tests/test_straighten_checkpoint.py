"""Straightening's checkpoint (boss_fast.straighten.checkpoint): bit-for-bit resume, extension, refusals."""

from __future__ import annotations

import pytest
import torch
from _straightening import FAST, TinyVelocity, run_straighten, schedule_at


def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path):
    model = TinyVelocity()
    sched = schedule_at(10, [0, 4, 10])
    kwargs = {**FAST, "iters": 10, "checkpoint_every": 3}
    reference = run_straighten(model, sched, **kwargs)

    def crash(step: int, loss: float) -> None:
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_straighten(model, sched, **kwargs, checkpoint_dir=tmp_path, callback=crash)
    seen = []
    resumed = run_straighten(
        model, sched, **kwargs, checkpoint_dir=tmp_path, callback=lambda s, v: seen.append(s)
    )
    assert seen == [7, 8, 9, 10]  # the checkpoint at step 6: one interval (step 7) lost
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value)  # bit for bit


def test_a_finished_run_with_more_iterations_is_refused_and_a_shorter_one_is_extended(tmp_path):
    """iters=10 on a folder holding a finished 30-step run returned the 30-step model on main."""
    model, sched = TinyVelocity(), schedule_at(10, [0, 4, 10])
    args = {**FAST, "iters": 6, "checkpoint_every": 3}
    run_straighten(model, sched, **args, checkpoint_dir=tmp_path)  # finished at step 6
    with pytest.raises(
        ValueError, match=r"straighten\.pt holds a run at step 6, past iters = 4: .*iters >= 6"
    ):
        run_straighten(model, sched, **{**args, "iters": 4}, checkpoint_dir=tmp_path)
    seen = []
    extended, stats = run_straighten(model, sched, **{**args, "iters": 9}, checkpoint_dir=tmp_path,
                                  callback=lambda s, v: seen.append(s), return_stats=True)  # fmt: skip
    fresh = run_straighten(model, sched, **{**args, "iters": 9})
    assert seen == [7, 8, 9] and stats.steps == 9
    for key, value in fresh.state_dict().items():
        assert torch.equal(extended.state_dict()[key], value)  # bit for bit
    again, stats = run_straighten(
        model, sched, **{**args, "iters": 9}, checkpoint_dir=tmp_path, return_stats=True
    )
    assert stats.steps == 9 and all(
        torch.equal(again.state_dict()[k], v) for k, v in fresh.state_dict().items()
    )


def test_straightening_on_a_coarser_teacher_is_deterministic_and_checkpointed_with_it(tmp_path):
    sched = schedule_at(10, [0, 4, 10])
    cheap = {**FAST, "pair_steps": 4, "pair_solver": "heun"}
    first = run_straighten(TinyVelocity(), sched, **cheap, checkpoint_dir=tmp_path)
    again = run_straighten(TinyVelocity(), sched, **cheap)
    default = run_straighten(TinyVelocity(), sched, **FAST)
    for key, value in first.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)  # same seed, same bits
    assert any(not torch.equal(default.state_dict()[k], v) for k, v in first.state_dict().items())
    with pytest.raises(ValueError, match="other settings.*pair_steps"):
        run_straighten(TinyVelocity(), sched, **{**cheap, "pair_steps": 5}, checkpoint_dir=tmp_path)


def test_a_checkpoint_of_the_published_pairs_is_refused_by_the_default_and_says_how_to_resume(tmp_path):
    """A run on the schedule's own teacher (the default before the cheap pairs; its checkpoint stores no
    pair_* key) resumes only with that teacher asked for again, and the refusal says how."""
    sched = schedule_at(10, [0, 4, 10])
    published = {**FAST, "pair_steps": None, "pair_solver": None}
    run_straighten(TinyVelocity(), sched, **published, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"other settings.*pass pair_steps=None, pair_solver=None"):
        run_straighten(TinyVelocity(), sched, **{**FAST, "iters": 6}, checkpoint_dir=tmp_path)
    _, stats = run_straighten(
        TinyVelocity(), sched, **{**published, "iters": 6}, checkpoint_dir=tmp_path, return_stats=True
    )
    assert stats.steps == 6


def test_a_checkpoint_from_another_model_or_schedule_is_refused(tmp_path):
    model = TinyVelocity()
    sched = schedule_at(10, [0, 4, 10])
    run_straighten(model, sched, **FAST, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="written for model"):
        run_straighten(TinyVelocity(seed=1), sched, **FAST, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="different schedule"):
        run_straighten(model, schedule_at(10, [0, 5, 10]), **FAST, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="other settings"):
        run_straighten(model, sched, **FAST, checkpoint_dir=tmp_path, lr=1e-3)


def test_a_corrupt_checkpoint_is_refused_by_name(tmp_path):
    (tmp_path / "straighten.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"straighten checkpoint .*straighten\.pt is unreadable"):
        run_straighten(TinyVelocity(), schedule_at(10, [0, 4, 10]), **FAST, checkpoint_dir=tmp_path)


def test_a_truncated_empty_or_bit_flipped_checkpoint_is_refused_by_name(tmp_path):
    model, sched = TinyVelocity(), schedule_at(10, [0, 4, 10])
    run_straighten(model, sched, **FAST, checkpoint_dir=tmp_path)
    path = tmp_path / "straighten.pt"
    good = path.read_bytes()
    state = torch.load(path, weights_only=True)
    flipped = state["params"][0].clone()
    flipped.view(torch.int32).view(-1)[0] ^= 1  # one bit of the parameter data
    state["params"][0] = flipped
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"straighten\.pt fails its checksum"):
        run_straighten(model, sched, **FAST, checkpoint_dir=tmp_path)
    for data in (good[: len(good) // 2], b""):
        path.write_bytes(data)
        with pytest.raises(ValueError, match=r"straighten checkpoint .*straighten\.pt is unreadable"):
            run_straighten(model, sched, **FAST, checkpoint_dir=tmp_path)
    path.write_bytes(good)
    run_straighten(model, sched, **FAST, checkpoint_dir=tmp_path)  # the intact file still resumes


def test_a_checkpoint_for_another_teacher_or_noise_is_refused(tmp_path):
    model, sched = TinyVelocity(), schedule_at(10, [0, 4, 10])
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(3))
    run_straighten(model, sched, **FAST, checkpoint_dir=tmp_path, noise=noise)
    with pytest.raises(ValueError, match="another teacher"):
        run_straighten(
            model, sched, **FAST, checkpoint_dir=tmp_path, noise=noise, teacher=TinyVelocity(seed=1)
        )
    with pytest.raises(ValueError, match="another noise"):
        run_straighten(model, sched, **FAST, checkpoint_dir=tmp_path, noise=noise + 1)
    run_straighten(model, sched, **FAST, checkpoint_dir=tmp_path, noise=noise)  # the same run resumes
