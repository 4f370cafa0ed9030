"""`boss-fast schedule --pipeline` end to end on tiny random SD3 and Flux pipelines built offline and saved
with save_pretrained (tests/_tiny_pipelines.py: real CLIP and T5 text stacks with character tokenizers; no
download). The CLI's schedules equal the Python API's on the same prompt bank."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import boss_fast as bf

pytest.importorskip("diffusers")

from _tiny_pipelines import save_tiny_flux, save_tiny_sd3  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from boss_fast.cli import main  # noqa: E402
from boss_fast.integrations import pipelines  # noqa: E402
from boss_fast.integrations.sigmas import comfyui_text  # noqa: E402

# 3 noises in batches of 2 over a bank of 3 prompts: the pairing crosses a batch boundary.
SEARCH = ["--max-steps", "2", "--grid", "5", "--num-samples", "3", "--batch-size", "2", "--no-progress"]
LENGTH = ["--max-sequence-length", "8"]  # the T5 length (default 256): 85 text tokens, not 333
PROMPTS = "a red cat\na blue dog\n\nthe sea\n"  # three prompts (blank lines skipped)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    (root / "prompts.txt").write_text(PROMPTS)
    return root, save_tiny_sd3(str(root)), save_tiny_flux(str(root))


def run(capsys, argv):
    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@functools.cache
def python_api(path, guidance, height, prompts=("a red cat", "a blue dog", "the sea")):
    pipe = pipelines.load_pipeline(path)
    cond = pipelines.encode_prompts(pipe, list(prompts), guidance, max_sequence_length=8)
    target = pipelines.pipeline_target(pipe, cond, guidance, height, height)
    sset = bf.optimal_schedules(
        target.velocity, target.shape, 2, bf.SearchSettings(grid=5, num_samples=3, batch_size=2)
    )
    return pipe, cond, target, sset


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_schedule_pipeline_end_to_end(saved, capsys, kind):
    root, sd3, flux = saved
    path, height, guidance = (sd3, 64, 4.5) if kind == "sd3" else (flux, 32, 3.5)
    out = root / f"{kind}.schedules.json"
    size = ["--height", str(height), "--width", str(height)]
    prompts = str(root / "prompts.txt")
    argv = ["schedule", "--pipeline", path, "--prompts", prompts, "--guidance", str(guidance), *size,
            "--out", str(out), *SEARCH, *LENGTH]  # fmt: skip
    text = run(capsys, argv)
    got = bf.ScheduleSet.load(out)
    pipe, cond, target, want = python_api(path, guidance, height)
    assert target.velocity.bank_size == 3 and (target.velocity.guided == (kind == "sd3"))
    for k in (1, 2):
        assert np.array_equal(got[k].indices, want[k].indices)
        assert got[k].cost == pytest.approx(want[k].cost, rel=1e-6)
        assert got[k].shape == target.shape and got[k].mu == target.mu
    assert target.shape == ((4, 8, 8) if kind == "sd3" else (4, 16))
    assert (target.mu is None) == (kind == "sd3")  # Flux always passes mu; SD3 without dynamic shifting not
    assert "K = 2:" in text and "comfyui:   " + bf_comfy(got[2]) in text
    diffusers_line = next(
        line for line in text.splitlines() if line.startswith("  diffusers:") and "=2," in line
    )
    assert "num_inference_steps=2, sigmas=[" in diffusers_line
    # The printed sigmas, given to the pipeline's own stock scheduler with its mu, step at the schedule.
    values = [float(v) for v in diffusers_line.split("sigmas=[")[1].rstrip("]").split(", ")]
    pipe.scheduler.set_timesteps(sigmas=values, mu=target.mu)
    np.testing.assert_allclose(pipe.scheduler.sigmas.double().numpy(), got[2].sigmas(), atol=1e-6)
    # The sigmas command reads the same file.
    comfy = run(capsys, ["sigmas", str(out), "--steps", "2", "--format", "comfyui"]).strip()
    assert comfy == bf_comfy(got[2])


def bf_comfy(sched):
    return comfyui_text(sched.sigmas())


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_embeddings_file_is_the_same_bank(saved, capsys, tmp_path):
    """--embeddings (the pipelines' own argument names, safetensors) gives the --prompts schedule."""
    root, sd3, _ = saved
    pipe, cond, _, want = python_api(sd3, 4.5, 64)
    save_file({k: v.contiguous() for k, v in cond.items()}, str(tmp_path / "bank.safetensors"))
    out = tmp_path / "emb.json"
    bank = str(tmp_path / "bank.safetensors")
    run(capsys, ["schedule", "--pipeline", sd3, "--embeddings", bank, "--guidance", "4.5", "--height", "64",
                 "--width", "64", "--out", str(out), *SEARCH])  # fmt: skip
    got = bf.ScheduleSet.load(out)
    assert all(np.array_equal(got[k].indices, want[k].indices) for k in (1, 2))


def test_pipeline_errors(saved, capsys, tmp_path):
    root, sd3, flux = saved
    out = str(tmp_path / "x.json")
    cases = [
        (["--pipeline", sd3, "--out", out, "--steps", "2"], "needs one of --prompts FILE"),
        (["--pipeline", sd3, "--prompts", str(tmp_path / "no"), "--out", out, "--steps", "2"], "no such"),
        (["--pipeline", sd3, "--prompts", str(root / "prompts.txt"), "--shape", "4,8,8", "--out", out,
          "--steps", "2"], "latent shape follows"),
        (["--pipeline", sd3, "--prompts", str(root / "prompts.txt"), "--height", "60", "--out", out,
          "--steps", "2"], "height must be a positive multiple of 8"),
        (["--model", "gmm2d", "--prompts", str(root / "prompts.txt"), "--out", out, "--steps", "2"],
         "--prompts applies to --pipeline only"),
        (["--pipeline", str(tmp_path / "missing"), "--prompts", str(root / "prompts.txt"), "--out", out,
          "--steps", "2"], "error"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(["schedule", *argv]) == 2
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]  # (diffusers' own loading bars come before it on stderr)
        assert last.startswith("boss-fast schedule: error:") and message in last, err
    assert not (tmp_path / "x.json").exists()
    pipe = pipelines.load_pipeline(sd3)
    plain = {"prompt_embeds": torch.zeros(2, 85, 16), "pooled_prompt_embeds": torch.zeros(2, 8)}
    with pytest.raises(ValueError, match="guidance 7.0 > 1 runs classifier-free guidance: .* needs negative"):
        pipelines.pipeline_target(pipe, plain, None, 64, 64)  # SD3's default guidance is CFG
    assert pipelines.pipeline_target(pipe, plain, 1.0, 64, 64).velocity.guided is False
    with pytest.raises(ValueError, match=r"pooled_prompt_embeds has shape \(2, 9\); .* width 8"):
        pipelines.pipeline_target(pipe, dict(plain, pooled_prompt_embeds=torch.zeros(2, 9)), 1.0, 64, 64)
    flux_pipe = pipelines.load_pipeline(flux)
    negatives = dict(plain, negative_prompt_embeds=plain["prompt_embeds"])
    with pytest.raises(ValueError, match="true CFG .* not supported"):
        pipelines.pipeline_target(flux_pipe, negatives, None, 32, 32)
    with pytest.raises(
        ValueError, match="guidance does not apply"
    ):  # a schnell-like Flux: no guidance embedding
        pipe = pipelines.load_pipeline(flux)
        pipe.transformer.register_to_config(guidance_embeds=False)
        pipelines.pipeline_target(pipe, {"prompt_embeds": torch.zeros(1, 5, 16),
                                         "pooled_prompt_embeds": torch.zeros(1, 8)}, 2.0, 32, 32)  # fmt: skip
