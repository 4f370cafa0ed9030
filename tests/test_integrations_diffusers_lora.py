"""A straightened LoRA written for diffusers: the real ``load_lora_weights`` and
``BossScheduler.from_pretrained`` on tiny random SD3 and Flux pipelines (saved with ``save_pretrained``,
loaded back; no text stack: prompt embeddings are given) sample as the student does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import boss_fast as bf

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from _tiny_flux import tiny_flux_transformer  # noqa: E402
from _tiny_pipelines import save_tiny_flux, save_tiny_sd3  # noqa: E402
from _tiny_sd3 import tiny_sd3_transformer  # noqa: E402
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline  # noqa: E402
from safetensors import safe_open  # noqa: E402

from boss_fast.cli import main  # noqa: E402
from boss_fast.integrations.diffusers import BossScheduler, DiffusersVelocity  # noqa: E402
from boss_fast.integrations.diffusers_lora import (  # noqa: E402
    LORA_WEIGHT_NAME,
    save_diffusers_lora,
    straighten_pipeline,
)
from boss_fast.integrations.pipelines import encode_prompts, load_pipeline  # noqa: E402
from boss_fast.ode import for_rows  # noqa: E402
from boss_fast.straighten import StraightenMemory  # noqa: E402

GRID = np.linspace(0.0, 1.0, 5)
SCHED = bf.Schedule(times=GRID[[0, 2, 4]], indices=np.array([0, 2, 4]), cost=0.0, grid=GRID)
# A schedule from t = 0.25 (a first sigma of 0.75), starting from the noise itself there as a pipeline does.
LATE = bf.Schedule(times=GRID[[1, 2, 4]], indices=np.array([1, 2, 4]), cost=0.0, grid=GRID, start="noise")
PROMPTS = 2  # a bank: noise m trains with prompt m mod 2
# Each case: pipeline class, transformer, one sample's latent shape, the pipeline's pixel side, velocity
# arguments beyond the bank (Flux: timestep / 1000, batch-free ids, the guidance embedding).
CASES = {
    "sd3": (StableDiffusion3Pipeline, tiny_sd3_transformer, (4, 8, 8), 64, {}),
    "flux": (FluxPipeline, tiny_flux_transformer, (4, 16), 32, {
        "timestep_scale": 1.0,
        "fixed": {"txt_ids": torch.zeros(5, 3),
                  "img_ids": FluxPipeline._prepare_latent_image_ids(1, 2, 2, "cpu", torch.float32)},
        "guidance": torch.full((1,), 3.5),
    }),
}  # fmt: skip


def _absent(cls) -> dict[str, None]:
    """The components left out (text stacks, VAE; Flux's image encoder), passed as None both ways."""
    names = ["vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"]
    names += ["text_encoder_3", "tokenizer_3"] if cls is StableDiffusion3Pipeline else []
    names += ["image_encoder", "feature_extractor"] if cls is FluxPipeline else []
    return dict.fromkeys(names)


def _load(cls, path):
    pipe = cls.from_pretrained(path, **_absent(cls))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("start", ["zero", "noise_later"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_load_lora_weights_and_the_saved_scheduler_reproduce_the_student(tmp_path, case, start):
    """Straightened pairs, the LoRA file and the saved BossScheduler (with its start rule) round trip: the
    loaded pipeline from the same latents gives bf.sample of the student on the schedule."""
    sched = SCHED if start == "zero" else LATE
    cls, make, shape, side, extra = CASES[case]
    cls(transformer=make(), scheduler=FlowMatchEulerDiscreteScheduler(), **_absent(cls)).save_pretrained(
        tmp_path / "base"
    )
    pipe = _load(cls, tmp_path / "base")
    gen = torch.Generator().manual_seed(0)
    embeds, pooled = torch.randn(PROMPTS, 5, 16, generator=gen), torch.randn(PROMPTS, 8, generator=gen)
    velocity = DiffusersVelocity(pipe.transformer, encoder_hidden_states=embeds, pooled_projections=pooled,
                                 **extra)  # fmt: skip
    settings = bf.StraightenSettings(
        num_pairs=4, grid=tuple(GRID), iters=3, batch_size=4, lr=1e-2, warmup=0, ema=0.0, lora_rank=2,
        lora_alpha=4.0, merge=False, memory=StraightenMemory(in_place=True),
    )  # fmt: skip
    student = bf.straighten(velocity, sched, settings=settings, shape=shape, progress=False)
    out = tmp_path / "lora"
    assert save_diffusers_lora(student, pipe, out, sched) == str(out / LORA_WEIGHT_NAME)
    with safe_open(str(out / LORA_WEIGHT_NAME), "pt") as f:
        assert all(k.startswith("transformer.") and ".lora_" in k for k in f.keys())  # noqa: SIM118

    loaded = _load(cls, tmp_path / "base")  # the base weights, untouched by the in-place training
    loaded.load_lora_weights(out)
    loaded.scheduler = BossScheduler.from_pretrained(out, subfolder="scheduler")
    assert loaded.scheduler.start == sched.start
    noise = torch.randn(2, *shape, generator=gen)
    call = dict(guidance_scale=1.0 if case == "sd3" else 3.5, num_inference_steps=sched.steps, height=side,
                width=side, output_type="latent")  # fmt: skip
    for p in range(PROMPTS):
        got = loaded(
            prompt_embeds=embeds[p : p + 1].expand(2, -1, -1),
            pooled_prompt_embeds=pooled[p : p + 1].expand(2, -1),
            latents=noise.clone(),
            **call,
        ).images
        with torch.no_grad():
            want = bf.sample(for_rows(student, torch.full((2,), p)), noise, sched)
            base = bf.sample(for_rows(DiffusersVelocity(make(), encoder_hidden_states=embeds,
                                                        pooled_projections=pooled, **extra),
                                      torch.full((2,), p)), noise, sched)  # fmt: skip
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        assert float((base - want).abs().max()) > 1e-3  # the adapters changed the samples: a real check
    loaded.fuse_lora()
    fused = loaded(prompt_embeds=embeds[:1].expand(2, -1, -1), pooled_prompt_embeds=pooled[:1].expand(2, -1),
                   latents=noise.clone(), **call).images  # fmt: skip
    with torch.no_grad():
        want = bf.sample(for_rows(student, torch.zeros(2, dtype=torch.long)), noise, sched)
    torch.testing.assert_close(fused, want, rtol=0, atol=1e-5)


def test_a_merged_or_plain_student_is_refused(tmp_path):
    velocity = DiffusersVelocity(tiny_sd3_transformer(), encoder_hidden_states=torch.randn(1, 5, 16),
                                 pooled_projections=torch.randn(1, 8))  # fmt: skip
    with pytest.raises(TypeError, match="no LoRA adapters"):
        save_diffusers_lora(velocity, StableDiffusion3Pipeline, tmp_path, SCHED)
    with pytest.raises(TypeError, match="save_lora_weights"):
        save_diffusers_lora(velocity, object(), tmp_path, SCHED)
    with pytest.raises(TypeError, match="Schedule"):
        save_diffusers_lora(velocity, StableDiffusion3Pipeline, tmp_path, SCHED.times)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("kind", ["sd3", pytest.param("flux", marks=pytest.mark.slow)])
def test_cli_straighten_pipeline_writes_a_folder_the_pipeline_loads(tmp_path, capsys, kind):
    """``boss-fast schedule --pipeline`` then ``straighten --pipeline`` on a tiny pipeline saved with its text
    stack (prompts encoded by its own encode_prompt; SD3 with CFG at 2): the folder loads into the pipeline,
    its scheduler steps at the schedule, its LoRA changes the samples, and the pipeline the CLI trained in
    place would be the base again (``straighten_pipeline`` unloads the adapters)."""
    path = (save_tiny_sd3 if kind == "sd3" else save_tiny_flux)(str(tmp_path))
    side, guidance = ("64", "2.0") if kind == "sd3" else ("32", "3.5")
    (tmp_path / "prompts.txt").write_text("a red cat\nthe sea\n")
    common = ["--pipeline", path, "--prompts", str(tmp_path / "prompts.txt"), "--guidance", guidance,
              "--height", side, "--width", side, "--max-sequence-length", "8", "--no-progress"]  # fmt: skip
    sets = str(tmp_path / "k.json")
    search = ["--max-steps", "2", "--grid", "4", "--num-samples", "2", "--batch-size", "2"]
    assert main(["schedule", *common, *search, "--out", sets]) == 0, capsys.readouterr().err
    out = tmp_path / "lora"
    train = ["--lora-rank", "2", "--num-pairs", "4", "--iters", "3", "--batch-size", "4", "--lr", "1e-2",
             "--warmup", "0", "--ema", "0", "--gradient-checkpointing"]  # fmt: skip
    argv = ["straighten", *common, "--schedule", sets, "--steps", "2", *train, "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    assert "load_lora_weights" in capsys.readouterr().out
    sched = bf.ScheduleSet.load(sets)[2]
    pipe = load_pipeline(path)
    pipe.scheduler = BossScheduler.from_pretrained(out, subfolder="scheduler")
    assert pipe.scheduler.config.times == sched.times.tolist()
    shape = (1, 4, 8, 8) if kind == "sd3" else (1, 4, 16)
    noise = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    call = dict(prompt="a red cat", guidance_scale=float(guidance), num_inference_steps=2, height=int(side),
                width=int(side), output_type="latent", max_sequence_length=8)  # fmt: skip
    base = pipe(latents=noise.clone(), **call).images
    pipe.load_lora_weights(out)
    adapted = pipe(latents=noise.clone(), **call).images
    assert torch.isfinite(adapted).all() and float((adapted - base).abs().max()) > 1e-3


def test_straighten_pipeline_gives_the_pipeline_back_and_refuses_another_resolution(tmp_path):
    pipe = load_pipeline(save_tiny_sd3(str(tmp_path)))
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    cond = encode_prompts(pipe, ["a cat"], guidance=1.0, max_sequence_length=8)
    train = bf.StraightenSettings(num_pairs=2, grid=tuple(GRID), iters=2, batch_size=2, lr=1e-2, warmup=0,
                                  lora_rank=2)  # fmt: skip
    straighten_pipeline(pipe, SCHED, cond, tmp_path / "out", train, guidance=1.0, progress=False)
    after = pipe.transformer.state_dict()  # the adapters were trained in place, then unloaded
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    searched_elsewhere = bf.Schedule(SCHED.times, SCHED.indices, 0.0, GRID, shape=(4, 16, 16))
    with pytest.raises(ValueError, match=r"shape \(4, 16, 16\).*\(4, 8, 8\)"):
        straighten_pipeline(
            pipe, searched_elsewhere, cond, tmp_path / "x", train, guidance=1.0, progress=False
        )
    with pytest.raises(ValueError, match="lora_rank=r"):  # the pipeline's LoRA needs a rank
        straighten_pipeline(pipe, SCHED, cond, tmp_path / "y", bf.StraightenSettings(), guidance=1.0)
    scaled = bf.Schedule(LATE.times, LATE.indices, 0.0, GRID, start="scaled")  # ComfyUI's rule, from 0.25
    with pytest.raises(ValueError, match=r"start rule is 'scaled'.*--start noise"):  # before any training
        straighten_pipeline(pipe, scaled, cond, tmp_path / "z", train, guidance=1.0, progress=False)
    assert not (tmp_path / "z").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pipeline", "p", "--schedule", "k.json", "--out", "o"], "give --lora-rank r"),
        (["--pipeline", "p", "--schedule", "k.json", "--out", "o", "--lora-rank", "2", "--shape", "4,8,8"],
         "--shape: with --pipeline"),
        (["--model", "mlp2d", "--schedule", "k.json", "--out", "o.safetensors", "--steps", "2"],
         "--steps applies to --pipeline only"),
        (["--model", "mlp2d", "--schedule", "k.json", "--out", "o.safetensors", "--prompts", "p.txt"],
         "--prompts applies to --pipeline only"),
    ],
)  # fmt: skip
def test_cli_straighten_refuses_flags_that_do_not_apply(capsys, argv, message):
    assert main(["straighten", *argv]) != 0
    assert message in capsys.readouterr().err
