"""diffusers interop without downloads: the stock FlowMatchEulerDiscreteScheduler is the reference for the
sigma maths, and a tiny random SD3Transformer2DModel runs through both schedulers and the SD3 pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import boss_fast as bf

pytest.importorskip("diffusers")

from _tiny_sd3 import tiny_sd3_transformer  # noqa: E402
from diffusers import (  # noqa: E402
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusion3Pipeline,
)
from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps  # noqa: E402

from boss_fast.integrations.diffusers import BossScheduler, DiffusersVelocity, diffusers_sigmas  # noqa: E402

TIMES = np.array([0.0, 0.08, 0.3, 0.65, 1.0])  # K = 4, uneven, like a Bellman schedule
SCHED = bf.Schedule(times=TIMES, indices=np.arange(5), cost=0.0, grid=TIMES)
EPS32 = float(torch.finfo(torch.float32).eps)


@pytest.fixture(scope="module")
def tiny():
    """A 1-layer SD3 transformer on 4x8x8 latents with random weights, and one prompt's conditioning."""
    net = tiny_sd3_transformer()
    net.requires_grad_(False)
    cond = {"encoder_hidden_states": torch.randn(1, 5, 16), "pooled_projections": torch.randn(1, 8)}
    return net, cond


def stock_sigmas(scheduler: FlowMatchEulerDiscreteScheduler, sigmas, mu=None) -> np.ndarray:
    scheduler.set_timesteps(sigmas=sigmas, mu=mu)
    return scheduler.sigmas.double().numpy()


# -- the sigma maths against diffusers' own scheduler -------------------------------------------------------


def test_diffusers_sigmas_invert_the_static_shift():
    stock = FlowMatchEulerDiscreteScheduler(shift=3.0)
    want = 1.0 - TIMES  # the scheduler appends the terminal 0 = 1 - t_K
    for sigmas in (diffusers_sigmas(SCHED, shift=3.0), diffusers_sigmas(SCHED, config=stock.config)):
        np.testing.assert_allclose(stock_sigmas(stock, sigmas), want, rtol=0, atol=4 * EPS32)
    # Passing the schedule's own sigmas would be shifted away from it: the inversion is what makes it work.
    assert np.abs(stock_sigmas(stock, SCHED.sigmas()[:-1]) - want).max() > 0.05


@pytest.mark.parametrize("kind", ["exponential", "linear"])
def test_diffusers_sigmas_invert_the_dynamic_shift(kind):
    stock = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type=kind)
    mu = 0.8
    sigmas = diffusers_sigmas(SCHED, mu=mu, config=stock.config)
    np.testing.assert_allclose(stock_sigmas(stock, sigmas, mu=mu), 1.0 - TIMES, rtol=0, atol=4 * EPS32)
    assert sigmas == diffusers_sigmas(SCHED, mu=mu, time_shift_type=kind)


def test_diffusers_sigmas_errors():
    with pytest.raises(ValueError, match="ends at t = 0.9"):
        diffusers_sigmas(bf.Schedule(times=np.array([0.0, 0.9]), indices=np.arange(2), cost=0.0,
                                     grid=np.array([0.0, 0.9])))  # fmt: skip
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        diffusers_sigmas(SCHED, config=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True).config)
    with pytest.raises(ValueError, match="shift_terminal"):
        diffusers_sigmas(SCHED, config=FlowMatchEulerDiscreteScheduler(shift_terminal=0.1).config)
    with pytest.raises(ValueError, match="pass the pipeline's mu"):
        diffusers_sigmas(SCHED, config=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config)
    with pytest.raises(ValueError, match="not both"):
        diffusers_sigmas(SCHED, shift=3.0, mu=0.5)
    with pytest.raises(ValueError, match="shift must be > 0"):
        diffusers_sigmas(SCHED, shift=-1.0)


# -- the transformer, step by step, through both schedulers -------------------------------------------------


def run_loop(scheduler, net, cond, latents, **set_kwargs):
    """The SD3 pipeline's denoising loop, without classifier-free guidance."""
    scheduler.set_timesteps(**set_kwargs)
    x = latents
    batch = {k: v.expand(len(x), *v.shape[1:]) for k, v in cond.items()}
    for t in scheduler.timesteps:
        out = net(hidden_states=x, timestep=t.expand(len(x)), return_dict=False, **batch)[0]
        x = scheduler.step(out, t, x, return_dict=False)[0]
    return x


def test_boss_scheduler_equals_sample(tiny):
    net, cond = tiny
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    want = bf.sample(DiffusersVelocity(net, **cond), latents, SCHED)
    # Any shift or mu the pipeline asks for: the steps stay the schedule's.
    scheduler = BossScheduler.from_schedule(SCHED, FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    got = run_loop(scheduler, net, cond, latents, num_inference_steps=4, mu=1.2)
    # The same Euler step; the timesteps differ by one float32 rounding of (1 - t) * 1000 (the scheduler
    # rounds the float64 value once, the adapter computes it from float32 t), a few float32 ulps at the end.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scheduler.sigmas.double().numpy(), 1.0 - TIMES, atol=EPS32)


def test_stock_scheduler_with_diffusers_sigmas_equals_sample(tiny):
    net, cond = tiny
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    want = bf.sample(DiffusersVelocity(net, **cond), latents, SCHED)
    stock = FlowMatchEulerDiscreteScheduler(shift=3.0)
    got = run_loop(stock, net, cond, latents, sigmas=diffusers_sigmas(SCHED, shift=3.0))
    # The stock scheduler re-derives the sigmas in float32: a few float32 ulps per step.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    plain = run_loop(FlowMatchEulerDiscreteScheduler(shift=3.0), net, cond, latents, num_inference_steps=4)
    assert (plain - want).abs().max() > 1e-2  # its own shifted steps are another sampler


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("dynamic", [False, True], ids=["shift3", "dynamic"])
def test_sd3_pipeline_end_to_end(tiny, dynamic):
    """The real StableDiffusion3Pipeline with prompt embeddings given (no text encoders, no VAE)."""
    net, cond = tiny
    stock = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=dynamic)
    pipe = StableDiffusion3Pipeline(
        transformer=net,
        scheduler=BossScheduler.from_schedule(SCHED, stock.config),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    side = 8 * pipe.vae_scale_factor
    out = pipe(
        prompt_embeds=cond["encoder_hidden_states"].expand(2, -1, -1),
        pooled_prompt_embeds=cond["pooled_projections"].expand(2, -1),
        guidance_scale=1.0,
        num_inference_steps=4,
        height=side,
        width=side,
        latents=latents,
        output_type="latent",
    ).images
    want = bf.sample(DiffusersVelocity(net, **cond), latents, SCHED)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)  # as in test_boss_scheduler_equals_sample
    with pytest.raises(ValueError, match="num_inference_steps=4"):
        pipe(
            prompt_embeds=cond["encoder_hidden_states"],
            pooled_prompt_embeds=cond["pooled_projections"],
            guidance_scale=1.0,
            num_inference_steps=28,
            height=side,
            width=side,
            output_type="latent",
        )


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_flux_pipeline_end_to_end():
    """FluxPipeline (dynamic shifting, its own linspace sigmas and mu on every call, timestep / 1000, packed
    latents, guidance embedding) with prompt embeddings given; the adapter with timestep_scale=1."""
    torch.manual_seed(0)
    net = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        pooled_projection_dim=8,
        guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    ).eval()
    stock = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift=3.0)
    pipe = FluxPipeline(
        transformer=net,
        scheduler=BossScheduler.from_schedule(SCHED, stock.config),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
    )
    pipe.set_progress_bar_config(disable=True)
    embeds, pooled = torch.randn(1, 5, 16), torch.randn(1, 8)
    latents = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(4))  # 32x32 px: 2x2 packed tokens
    out = pipe(
        prompt_embeds=embeds.expand(2, -1, -1),
        pooled_prompt_embeds=pooled.expand(2, -1),
        guidance_scale=3.5,
        num_inference_steps=4,
        height=32,
        width=32,
        latents=latents,
        output_type="latent",
    ).images
    ids = {
        "txt_ids": torch.zeros(5, 3),
        "img_ids": FluxPipeline._prepare_latent_image_ids(2, 2, 2, "cpu", torch.float32),
    }
    velocity = DiffusersVelocity(
        net,
        timestep_scale=1.0,
        fixed=ids,
        encoder_hidden_states=embeds,
        pooled_projections=pooled,
        guidance=torch.full((1,), 3.5),
    )
    with torch.no_grad():
        want = bf.sample(velocity, latents, SCHED)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_flux_style_call_is_accepted():
    """Flux always passes its own linspace sigmas and a mu: same number of steps, the values are ignored."""
    scheduler = BossScheduler.from_schedule(SCHED)
    timesteps, n = retrieve_timesteps(scheduler, 4, "cpu", sigmas=np.linspace(1.0, 0.25, 4), mu=0.7)
    assert n == 4
    np.testing.assert_allclose(timesteps.double().numpy(), (1.0 - TIMES[:-1]) * 1000, rtol=EPS32)


def test_step_reads_no_device_value():
    """step() uses host floats: with the sigma tensors on the meta device (no data at all) it still works,
    where the stock scheduler, which indexes its sigma tensor, cannot."""
    scheduler = BossScheduler.from_schedule(SCHED)
    scheduler.set_timesteps(4, device="meta")
    scheduler.set_begin_index(0)  # as Flux does: no timestep lookup at the first step
    x, v = torch.randn(2, 3), torch.randn(2, 3)
    for i in range(4):
        x_next = scheduler.step(v, scheduler.timesteps[i], x).prev_sample
        torch.testing.assert_close(x_next, x + (TIMES[i] - TIMES[i + 1]) * v)
        x = x_next
    with pytest.raises(ValueError, match="step 5 of a 4-step schedule"):
        scheduler.step(v, 0.0, x)
    stock = FlowMatchEulerDiscreteScheduler()
    stock.set_timesteps(4, device="meta")
    stock.set_begin_index(0)
    with pytest.raises((RuntimeError, NotImplementedError)):
        stock.step(v, stock.timesteps[0], x)


def test_begin_index_and_scale_noise():
    scheduler = BossScheduler.from_schedule(SCHED)
    scheduler.set_timesteps(4)
    scheduler.set_begin_index(2)
    x0, noise = torch.randn(2, 3), torch.randn(2, 3)
    sigma = 1.0 - TIMES[2]
    torch.testing.assert_close(scheduler.scale_noise(x0, scheduler.timesteps[2:3], noise),
                               sigma * noise + (1 - sigma) * x0)  # fmt: skip
    got = scheduler.step(noise, scheduler.timesteps[2], x0).prev_sample  # starts at the begin index
    torch.testing.assert_close(got, x0 + (TIMES[2] - TIMES[3]) * noise)
    fresh = BossScheduler.from_schedule(SCHED)  # no begin index: the timestep is looked up
    torch.testing.assert_close(fresh.scale_noise(x0, torch.tensor([fresh.timesteps[1]]), noise),
                               (1 - TIMES[1]) * noise + TIMES[1] * x0)  # fmt: skip
    with pytest.raises(ValueError, match="begin_index must be in"):
        scheduler.set_begin_index(4)


def test_save_and_load(tmp_path):
    stock = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.6, max_shift=1.2)
    scheduler = BossScheduler.from_schedule(SCHED, stock.config)
    scheduler.save_pretrained(tmp_path)
    loaded = BossScheduler.from_pretrained(tmp_path)
    loaded.set_timesteps(4)
    scheduler.set_timesteps(4)
    assert torch.equal(loaded.sigmas, scheduler.sigmas) and torch.equal(loaded.timesteps, scheduler.timesteps)
    assert loaded.config.use_dynamic_shifting and loaded.config.max_shift == 1.2  # what pipelines read
    assert loaded.config.times == TIMES.tolist()


def test_scheduler_errors():
    with pytest.raises(ValueError, match="must end at t = 1"):
        BossScheduler.from_schedule([0.0, 0.5, 0.9])
    with pytest.raises(ValueError, match="strictly increasing"):
        BossScheduler.from_schedule([0.0, 0.5, 0.5, 1.0])
    scheduler = BossScheduler.from_schedule(SCHED)
    with pytest.raises(ValueError, match="got sigmas for 3 steps"):
        scheduler.set_timesteps(sigmas=[1.0, 0.5, 0.2])


# -- the velocity adapter in boss_fast's own algorithms -----------------------------------------------------


def test_adapter_conventions(tiny):
    net, cond = tiny
    velocity = DiffusersVelocity(net, **cond)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([0.25, 0.7])
    expected = -net(hidden_states=x, timestep=torch.tensor([750.0, 300.0]), return_dict=False,
                    **{k: v.expand(2, *v.shape[1:]) for k, v in cond.items()})[0]  # fmt: skip
    torch.testing.assert_close(velocity(x, t), expected, rtol=1e-6, atol=1e-6)
    pair = DiffusersVelocity(
        net, encoder_hidden_states=torch.randn(2, 5, 16), pooled_projections=torch.randn(2, 8)
    )
    assert pair(x, t).shape == x.shape
    with pytest.raises(ValueError, match="has batch 2 but x has batch 3"):
        pair(torch.randn(3, 4, 8, 8), torch.zeros(3))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        DiffusersVelocity(lambda x: x)


def test_optimal_schedule_and_straighten_on_a_transformer(tiny):
    net, cond = tiny
    velocity = DiffusersVelocity(net, **cond)
    sched = bf.optimal_schedule(
        velocity, (4, 8, 8), 2, grid=8, num_samples=4, batch_size=4, objective="local"
    )
    assert sched.steps == 2 and sched.times[0] == 0.0 and sched.times[-1] == 1.0
    assert sched.fingerprint == bf.model_fingerprint(velocity)
    before = {k: v.clone() for k, v in velocity.state_dict().items()}
    student = bf.straighten(velocity, sched, num_pairs=4, grid=8, iters=2, batch_size=4, warmup=1,
                            progress=False, pair_batch_size=4, shape=(4, 8, 8))  # fmt: skip
    assert isinstance(student, DiffusersVelocity)
    moved = [k for k, v in student.state_dict().items() if not torch.equal(v, before[k])]
    assert moved and all(k.startswith("transformer.") for k in moved)  # the transformer was fine-tuned
    assert all(torch.equal(v, before[k]) for k, v in velocity.state_dict().items())  # the teacher was not
    x = bf.sample(student, torch.randn(2, 4, 8, 8), sched)
    assert x.shape == (2, 4, 8, 8) and torch.isfinite(x).all()


# -- classifier-free guidance as SD3 pipelines run it ------------------------------------------------------


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_guided_adapter_equals_the_sd3_pipeline_with_cfg(tiny):
    """StableDiffusion3Pipeline at guidance_scale 4.5 with negative embeddings, through BossScheduler, is
    bf.sample of the guided adapter; Sampler(guidance=) on the doubled-batch adapter steps the same field."""
    net, cond = tiny
    neg = {"encoder_hidden_states": torch.randn(1, 5, 16), "pooled_projections": torch.randn(1, 8)}
    w = 4.5
    guided = DiffusersVelocity(net, negative=neg, guidance_scale=w, **cond)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    want = bf.sample(guided, latents, SCHED)
    pipe = StableDiffusion3Pipeline(
        transformer=net,
        scheduler=BossScheduler.from_schedule(SCHED, FlowMatchEulerDiscreteScheduler(shift=3.0).config),
        vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        text_encoder_3=None, tokenizer_3=None,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    side = 8 * pipe.vae_scale_factor
    out = pipe(
        prompt_embeds=cond["encoder_hidden_states"].expand(2, -1, -1),
        pooled_prompt_embeds=cond["pooled_projections"].expand(2, -1),
        negative_prompt_embeds=neg["encoder_hidden_states"].expand(2, -1, -1),
        negative_pooled_prompt_embeds=neg["pooled_projections"].expand(2, -1),
        guidance_scale=w,
        num_inference_steps=4,
        height=side,
        width=side,
        latents=latents,
        output_type="latent",
    ).images
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)  # as in test_sd3_pipeline_end_to_end
    # The Sampler's protocol: the same transformer batch [x; x] with [negative; conditioning], same bits.
    doubled = DiffusersVelocity(net, negative=neg, **cond)
    got = bf.Sampler(doubled, SCHED, mode="eager", backend="torch", guidance=w)(latents)
    assert torch.equal(got, want)
    # And the two-callable form: the conditional and unconditional adapters, combined.
    alike = bf.guided_velocity(DiffusersVelocity(net, **cond), DiffusersVelocity(net, **neg), w)
    torch.testing.assert_close(bf.sample(alike, latents, SCHED), want, rtol=1e-5, atol=1e-5)
    unguided = bf.sample(DiffusersVelocity(net, **cond), latents, SCHED)
    assert (unguided - want).abs().max() > 1e-2  # guidance changes the result


def test_guided_adapter_errors(tiny):
    net, cond = tiny
    with pytest.raises(ValueError, match="guidance_scale needs negative="):
        DiffusersVelocity(net, guidance_scale=2.0, **cond)
    with pytest.raises(ValueError, match=r"negative must give every tensor conditioning key: got \['pooled"):
        DiffusersVelocity(net, negative={"pooled_projections": torch.randn(1, 8)}, **cond)
    bad = {"encoder_hidden_states": torch.randn(1, 6, 16), "pooled_projections": torch.randn(1, 8)}
    with pytest.raises(ValueError, match="negative 'encoder_hidden_states' must be a tensor shaped like"):
        DiffusersVelocity(net, negative=bad, **cond)
    doubled = DiffusersVelocity(net, negative=dict(cond), **cond)
    with pytest.raises(ValueError, match="takes a doubled batch"):
        doubled(torch.randn(3, 4, 8, 8), torch.zeros(3))
