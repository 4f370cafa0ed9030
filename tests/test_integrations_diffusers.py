"""diffusers interop without downloads: the stock FlowMatchEulerDiscreteScheduler is the reference for the
sigma maths, and a tiny random SD3Transformer2DModel runs through both schedulers and the SD3 pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import boss_fast as bf
from boss_fast import ode

pytest.importorskip("diffusers")
import inspect

from _tiny_flux import tiny_flux_transformer  # noqa: E402
from _tiny_sd3 import tiny_sd3_transformer  # noqa: E402
from diffusers import (  # noqa: E402  # noqa: E402
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    FluxPipeline,
    StableDiffusion3Pipeline,
)
from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps  # noqa: E402
from diffusers.schedulers.scheduling_flow_match_euler_discrete import (  # noqa: E402
    FlowMatchEulerDiscreteSchedulerOutput,
)

from boss_fast.integrations.diffusers import BossScheduler, DiffusersVelocity, diffusers_sigmas  # noqa: E402
from boss_fast.integrations.pipelines import pipeline_mu  # noqa: E402

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
    net = tiny_flux_transformer()
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
    assert pair(x, t).shape == x.shape and pair.bank_size == 2
    # A plain call on 3 samples is for_rows(arange(3)): a bank of 2 gives entries 0, 1, 0.
    x3, t3 = torch.randn(3, 4, 8, 8), torch.rand(3)
    torch.testing.assert_close(pair(x3, t3), pair.for_rows(torch.arange(3))(x3, t3), rtol=0, atol=0)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        DiffusersVelocity(lambda x: x)


def test_optimal_schedule_and_straighten_on_a_transformer(tiny):
    net, cond = tiny
    velocity = DiffusersVelocity(net, **cond)
    sched = bf.optimal_schedules(
        velocity, (4, 8, 8), 2, bf.SearchSettings(grid=8, num_samples=4, batch_size=4, objective="local")
    )[2]
    assert sched.steps == 2 and sched.times[0] == 0.0 and sched.times[-1] == 1.0
    assert sched.fingerprint == bf.model_fingerprint(velocity)
    before = {k: v.clone() for k, v in velocity.state_dict().items()}
    settings = bf.StraightenSettings(num_pairs=4, grid=8, iters=2, batch_size=4, warmup=1, pair_batch_size=4)
    student = bf.straighten(velocity, sched, settings=settings, progress=False, shape=(4, 8, 8))
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
    # Guiding an adapter that is no doubled-batch pair (plain, or already guided) is refused, not unguided.
    for single in (
        DiffusersVelocity(net, **cond),
        DiffusersVelocity(net, negative=neg, guidance_scale=w, **cond),
    ):
        with pytest.raises(TypeError, match="DiffusersVelocity does not say it does"):
            bf.Sampler(single, SCHED, mode="eager", guidance=w)
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


# -- a bank of conditionings: noise row m uses conditioning m mod P ------------------------------------------

SPLITS = ([7], [3, 4], [2, 2, 2, 1], [1] * 7)  # batchings of the same 7 noise rows


def rowwise(velocity, x, t, split, rows=None):
    """``velocity`` on x (M, ...) in batches of ``split``, each through ``ode.for_rows`` with global rows."""
    rows = torch.arange(len(x)) if rows is None else rows
    out, start = [], 0
    for b in split:
        stop = start + b
        out.append(ode.for_rows(velocity, rows[start:stop])(x[start:stop], t[start:stop]))
        start = stop
    return torch.cat(out)


def sd3_bank(p: int, guided: bool):
    g = torch.Generator().manual_seed(11)
    cond = {"encoder_hidden_states": torch.randn(p, 5, 16, generator=g),
            "pooled_projections": torch.randn(p, 8, generator=g)}  # fmt: skip
    neg = {"encoder_hidden_states": torch.randn(p, 5, 16, generator=g),
           "pooled_projections": torch.randn(p, 8, generator=g)}  # fmt: skip
    return cond, (neg if guided else None)


@pytest.mark.parametrize("guided", [False, True], ids=["plain", "cfg"])
def test_bank_pairs_row_m_with_conditioning_m_mod_p_sd3(tiny, guided):
    """Row m of 7 noises against a bank of P = 3 (with per-prompt negatives and CFG 4.5): equal to the
    one-prompt adapter of prompt m mod 3 on that row alone, whatever the batching."""
    net, _ = tiny
    cond, neg = sd3_bank(3, guided)
    kw = {"negative": neg, "guidance_scale": 4.5} if guided else {}
    bank = DiffusersVelocity(net, **kw, **cond)
    assert bank.bank_size == 3
    x = torch.randn(7, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    t = torch.rand(7, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = []
        for m in range(7):
            one = {k: v[m % 3 : m % 3 + 1] for k, v in cond.items()}
            one_kw = {}
            if guided:
                one_kw = {
                    "negative": {k: v[m % 3 : m % 3 + 1] for k, v in neg.items()},
                    "guidance_scale": 4.5,
                }
            single = DiffusersVelocity(net, **one_kw, **one)
            want.append(single(x[m : m + 1], t[m : m + 1]))
        want = torch.cat(want)
        for split in SPLITS:  # batch composition moves the transformer's float32 sums by a few ulps at most
            torch.testing.assert_close(rowwise(bank, x, t, split), want, rtol=1e-5, atol=1e-5)
        # Global rows, not batch positions: rows 10..16 are entries 1, 2, 0, ... (10 mod 3 = 1).
        shifted = rowwise(bank, x, t, [3, 4], rows=torch.arange(10, 17))
        torch.testing.assert_close(shifted[:6], rowwise(bank, x[:6], t[:6], [6], torch.arange(1, 7)))
        assert (shifted - want).abs().max() > 1e-3  # another pairing gives another velocity


def test_bank_on_a_flux_transformer():
    """The same pairing on the tiny Flux transformer: a bank of P = 2 prompts, batch-1 guidance, batch-free
    ids (fixed=); rows 0..4 in any batching equal each row alone with its prompt."""
    net = tiny_flux_transformer()
    g = torch.Generator().manual_seed(2)
    embeds, pooled = torch.randn(2, 5, 16, generator=g), torch.randn(2, 8, generator=g)
    ids = {"txt_ids": torch.zeros(5, 3),
           "img_ids": FluxPipeline._prepare_latent_image_ids(1, 2, 2, "cpu", torch.float32)}  # fmt: skip
    common = {"timestep_scale": 1.0, "fixed": ids, "guidance": torch.full((1,), 3.5)}
    bank = DiffusersVelocity(net, encoder_hidden_states=embeds, pooled_projections=pooled, **common)
    x = torch.randn(5, 4, 16, generator=g)
    t = torch.rand(5, generator=g)
    with torch.no_grad():
        singles = [
            DiffusersVelocity(
                net, encoder_hidden_states=embeds[p : p + 1], pooled_projections=pooled[p : p + 1], **common
            )
            for p in range(2)
        ]  # fmt: skip
        want = torch.cat([singles[m % 2](x[m : m + 1], t[m : m + 1]) for m in range(5)])
        for split in ([5], [2, 3], [1] * 5):
            torch.testing.assert_close(rowwise(bank, x, t, split), want, rtol=1e-5, atol=1e-5)


def test_search_pairs_by_global_row(tiny):
    """optimal_schedules on a bank: the same schedules at batch size 2 and 8 (each noise keeps its prompt),
    both objectives; a plain batch-position pairing would differ (checked through the costs)."""
    net, _ = tiny
    cond, _ = sd3_bank(3, False)
    bank = DiffusersVelocity(net, **cond)
    for objective in ("global", "local"):
        wide = bf.SearchSettings(grid=6, num_samples=8, objective=objective, batch_size=8)
        narrow = bf.SearchSettings(grid=6, num_samples=8, objective=objective, batch_size=2)
        a = bf.optimal_schedules(bank, (4, 8, 8), 3, wide)
        b = bf.optimal_schedules(bank, (4, 8, 8), 3, narrow)
        for k in a:
            assert np.array_equal(a[k].indices, b[k].indices)
            assert a[k].cost == pytest.approx(b[k].cost, rel=1e-5)
        pos = bf.optimal_schedules(_BatchPositions(bank), (4, 8, 8), 3, narrow)
        assert pos[1].cost != pytest.approx(a[1].cost, rel=1e-5)  # the control: pairing by batch position


class _BatchPositions(torch.nn.Module):
    """The bank without its for_rows: every batch pairs its own positions 0, 1, ... (the wrong pairing)."""

    def __init__(self, bank):
        super().__init__()
        self.bank = bank

    def forward(self, x, t):
        return self.bank(x, t)


def test_bank_errors(tiny):
    net, _ = tiny
    with pytest.raises(ValueError, match="batch 1 or one common bank size P"):
        DiffusersVelocity(
            net, encoder_hidden_states=torch.randn(3, 5, 16), pooled_projections=torch.randn(2, 8)
        )
    cond, neg = sd3_bank(3, True)
    two = {k: v[:2] for k, v in neg.items()}
    with pytest.raises(ValueError, match="negative has a bank of 2 entries but the conditioning has 3"):
        DiffusersVelocity(net, negative=two, **cond)
    bank = DiffusersVelocity(net, **cond)
    for rows, match in ((torch.zeros(2), "1-D integer tensor"), (torch.tensor([[0]]), "1-D integer"),
                        (torch.tensor([0, -1]), ">= 0"), ([0, 1], "1-D integer")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            bank.for_rows(rows)
    with pytest.raises(ValueError, match="given 2 rows but x has batch 3"):
        bank.for_rows(torch.arange(2))(torch.randn(3, 4, 8, 8), torch.zeros(3))
    single = DiffusersVelocity(net, **{k: v[:1] for k, v in cond.items()})
    assert single.for_rows(torch.arange(4)) is single and ode.for_rows(single, torch.arange(4)) is single


# -- the schedule's resolution -------------------------------------------------------------------------------


def test_scheduler_warns_once_at_another_resolution(tmp_path):
    sched = bf.Schedule(times=TIMES, indices=np.arange(5), cost=0.0, grid=TIMES, shape=(4, 8, 8), mu=0.7)
    scheduler = BossScheduler.from_schedule(
        sched, FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config
    )
    scheduler.set_timesteps(4, mu=0.7)  # the searched mu and shape: silent (warnings are errors here)
    x = torch.zeros(1, 4, 8, 8)
    scheduler.step(x, scheduler.timesteps[0], x)
    with pytest.warns(UserWarning, match=r"passes mu = 1\.1 but this schedule was searched at mu = 0\.7"):
        scheduler.set_timesteps(4, mu=1.1)
    scheduler.set_timesteps(4, mu=1.1)  # once
    big = torch.zeros(1, 4, 16, 16)
    with pytest.warns(UserWarning, match=r"latents of shape \(4, 16, 16\) but .* searched at \(4, 8, 8\)"):
        scheduler.step(big, scheduler.timesteps[0], big)
    scheduler.step(big, scheduler.timesteps[1], big)  # once
    scheduler.save_pretrained(tmp_path)
    again = BossScheduler.from_pretrained(tmp_path)
    assert again.config.searched_shape == [4, 8, 8] and again.config.searched_mu == 0.7
    with pytest.warns(UserWarning, match="mu = 1.1"):
        again.set_timesteps(4, mu=1.1)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_flux_pipeline_at_another_resolution_warns():
    """A schedule searched at 32 x 32 px (4 tokens, the pipeline's mu there) run by FluxPipeline at 32 x 32:
    silent; at 64 x 64: one warning for mu and one for the latent shape."""
    net = tiny_flux_transformer()
    stock = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    pipe = FluxPipeline(transformer=net, scheduler=stock, vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    searched = bf.Schedule(times=TIMES, indices=np.arange(5), cost=0.0, grid=TIMES, shape=(4, 16),
                           mu=pipeline_mu(pipe, (4, 16)))  # fmt: skip
    pipe.scheduler = BossScheduler.from_schedule(searched, pipe.scheduler.config)
    embeds = {"prompt_embeds": torch.randn(1, 5, 16), "pooled_prompt_embeds": torch.randn(1, 8)}
    pipe(**embeds, num_inference_steps=4, height=32, width=32, output_type="latent")
    with pytest.warns(UserWarning) as record:
        pipe(**embeds, num_inference_steps=4, height=64, width=64, output_type="latent")
    messages = [str(w.message) for w in record]
    assert (
        len(messages) == 2 and "mu" in messages[0] and "(16, 16)" in messages[1] and "(4, 16)" in messages[1]
    )


# From test_diffusers_contract.py: BossScheduler against the contract of diffusers' stock
# FlowMatchEulerDiscreteScheduler.

TIMES_CONTRACT = np.array(
    [0.0, 0.125, 0.3125, 0.625, 1.0]
)  # K = 4; 1 - t and (1 - t) * 1000 are exact in float32
K = len(TIMES_CONTRACT) - 1
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# An image batch (B, C, H, W), Flux's packed tokens (B, N, C), a video batch (B, C, F, H, W).
SHAPES = {"4d": (3, 4, 8, 8), "packed3d": (3, 16, 64), "video5d": (2, 4, 3, 8, 8)}


def pair(**config) -> tuple[BossScheduler, FlowMatchEulerDiscreteScheduler]:
    """A BossScheduler and a stock scheduler (shift 1: it keeps the sigmas it is given) at TIMES_CONTRACT."""
    stock = FlowMatchEulerDiscreteScheduler(**config)
    boss = BossScheduler.from_schedule(TIMES_CONTRACT, stock.config)
    stock.set_timesteps(sigmas=(1.0 - TIMES_CONTRACT[:-1]).tolist())
    boss.set_timesteps(K)
    return boss, stock


def randn(shape, dtype, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_same_tensors_and_attributes():
    boss, stock = pair()
    assert torch.equal(boss.sigmas, stock.sigmas) and torch.equal(boss.timesteps, stock.timesteps)
    assert boss.sigmas.dtype == stock.sigmas.dtype == boss.timesteps.dtype == torch.float32
    assert (boss.order, len(boss), boss.shift, boss.step_index, boss.begin_index) == (
        stock.order,
        len(stock),
        stock.shift,
        stock.step_index,
        stock.begin_index,
    )
    boss.set_shift(2.5)
    stock.set_shift(2.5)
    assert boss.shift == stock.shift == 2.5
    for t in stock.timesteps:
        assert boss.index_for_timestep(t) == stock.index_for_timestep(t)


@pytest.mark.parametrize("method", ["step", "scale_noise", "set_timesteps", "index_for_timestep",
                                    "set_begin_index", "set_shift"])  # fmt: skip
def test_signatures_are_the_stock_ones(method):
    """Pipelines inspect these signatures (retrieve_timesteps looks for sigmas=/timesteps=, the extra step
    kwargs for generator=/eta=); every keyword of the stock method exists, and no other."""
    ours = list(inspect.signature(getattr(BossScheduler, method)).parameters)
    theirs = list(inspect.signature(getattr(FlowMatchEulerDiscreteScheduler, method)).parameters)
    assert ours == theirs


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_denoising_loop_is_bitwise_the_stock_one(shape, dtype):
    boss, stock = pair()
    x_boss = x_stock = randn(shape, dtype, 0)
    for i, (tb, ts) in enumerate(zip(boss.timesteps, stock.timesteps, strict=True)):
        v = randn(shape, dtype, i + 1)
        out_boss = boss.step(v, tb, x_boss)
        out_stock = stock.step(v, ts, x_stock)
        assert type(out_boss) is type(out_stock) is FlowMatchEulerDiscreteSchedulerOutput
        x_boss, x_stock = out_boss.prev_sample, out_stock.prev_sample
        assert x_boss.dtype == x_stock.dtype == dtype
        assert torch.equal(x_boss, x_stock)
        assert boss.step_index == stock.step_index == i + 1


def test_return_dict_false_is_a_tuple():
    boss, stock = pair()
    x, v = randn((2, 3), torch.float32, 0), randn((2, 3), torch.float32, 1)
    got = boss.step(v, boss.timesteps[0], x, return_dict=False)
    want = stock.step(v, stock.timesteps[0], x, return_dict=False)
    assert isinstance(got, tuple) and len(got) == 1 and torch.equal(got[0], want[0])


@pytest.mark.parametrize("start", [1, 2, 3])
def test_first_step_index_comes_from_the_timestep(start):
    """No begin index (training loops, pipelines that never call set_begin_index): the first step starts
    where its timestep is on the schedule, as the stock scheduler's index_for_timestep finds it."""
    boss, stock = pair()
    x = randn((2, 4, 8, 8), torch.float32, 0)
    for i in range(start, K):
        v = randn((2, 4, 8, 8), torch.float32, i)
        got = boss.step(v, boss.timesteps[i], x).prev_sample
        want = stock.step(v, stock.timesteps[i], x).prev_sample
        assert torch.equal(got, want)
        torch.testing.assert_close(got, x + float(TIMES_CONTRACT[i] - TIMES_CONTRACT[i + 1]) * v)
        x = got
    # A float timestep (the value, not the tensor) is found the same way.
    fresh, _ = pair()
    v = randn((2, 3), torch.float32, 9)
    got = fresh.step(v, float(fresh.timesteps[start]), torch.zeros(2, 3)).prev_sample
    torch.testing.assert_close(got, float(TIMES_CONTRACT[start] - TIMES_CONTRACT[start + 1]) * v)


def test_a_timestep_off_the_schedule_is_refused():
    boss, stock = pair()
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="not one of this schedule's timesteps"):
        boss.step(x, torch.tensor(500.0), x)
    with pytest.raises(IndexError):  # the stock scheduler fails too, less clearly
        stock.step(x, torch.tensor(500.0), x)
    with pytest.raises(ValueError, match="not one of this schedule's timesteps"):
        boss.scale_noise(x, torch.tensor([500.0]), x)


@pytest.mark.parametrize("timestep", [500, torch.tensor(500), torch.tensor([1000], dtype=torch.int32)],
                         ids=["int", "long", "int32"])  # fmt: skip
def test_an_integer_timestep_is_refused_like_the_stock_one(timestep):
    boss, stock = pair()
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="integer"):
        stock.step(x, timestep, x)
    with pytest.raises(ValueError, match="integer"):
        boss.step(x, timestep, x)
    assert boss.step_index is None  # nothing advanced


def test_a_keyword_the_stock_step_lacks_is_refused():
    boss, _ = pair()
    x = torch.zeros(2, 3)
    with pytest.raises(TypeError):
        boss.step(x, boss.timesteps[0], x, eta=0.0)
    with pytest.raises(TypeError):
        boss.scale_noise(x, boss.timesteps[:1], x, generator=None)


def test_unused_stock_keywords_change_nothing_in_either():
    """s_churn, s_tmin, s_tmax, s_noise and generator do not enter the stock deterministic step."""
    boss, stock = pair()
    x, v = randn((2, 3), torch.float32, 0), randn((2, 3), torch.float32, 1)
    extra = {"s_churn": 1.0, "s_tmin": 0.5, "s_tmax": 2.0, "s_noise": 3.0, "generator": torch.Generator()}
    got = boss.step(v, boss.timesteps[0], x, **extra).prev_sample
    assert torch.equal(got, stock.step(v, stock.timesteps[0], x, **extra).prev_sample)
    assert torch.equal(got, pair()[0].step(v, boss.timesteps[0], x).prev_sample)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_per_token_timesteps(dtype):
    """LTX-condition: conditioning tokens sit at lower timesteps than the rest; each token steps from its
    own sigma to the next lower sigma of the schedule, in float32 (as the stock scheduler does)."""
    boss, stock = pair()
    batch, tokens, channels = 2, 6, 8
    x = randn((batch, tokens, channels), dtype, 0)
    mask = torch.tensor([[1.0, 0.0, 0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.25, 0.0]])
    for i, (tb, ts) in enumerate(zip(boss.timesteps, stock.timesteps, strict=True)):
        per_token = torch.minimum(tb.expand(batch, 1), (1.0 - mask) * 1000.0)
        v = randn((batch, tokens, channels), dtype, i + 1)
        got = boss.step(-v, tb, x, per_token_timesteps=per_token, return_dict=False)[0]
        want = stock.step(-v, ts, x, per_token_timesteps=per_token, return_dict=False)[0]
        assert got.dtype == want.dtype == torch.float32
        assert torch.equal(got, want)
        plain = pair()[0].step(-v, tb, x).prev_sample
        if i == 0:
            assert not torch.equal(got.to(dtype), plain)  # the tokens below the current sigma moved less
        x = got.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_batched_scale_noise_and_add_noise(shape, dtype):
    """img2img and inpainting: one timestep per sample, each with its own sigma."""
    boss, stock = pair()
    x0, noise = randn(shape, dtype, 0), randn(shape, dtype, 1)
    per_sample = boss.timesteps[[2, 0, 3][: shape[0]]]
    got = boss.scale_noise(x0, per_sample, noise)
    want = stock.scale_noise(x0, stock.timesteps[[2, 0, 3][: shape[0]]], noise)
    assert got.dtype == dtype and torch.equal(got, want)
    for b, i in enumerate([2, 0, 3][: shape[0]]):  # each sample at its own sigma, up to three roundings
        sigma = 1.0 - TIMES_CONTRACT[i]
        exact = sigma * noise[b].double() + (1.0 - sigma) * x0[b].double()
        bound = 3 * torch.finfo(dtype).eps * (noise[b].double().abs() + x0[b].double().abs())
        assert ((got[b].double() - exact).abs() <= bound).all()
    # Wan video-to-video calls add_noise when a scheduler has it, else scale_noise: the same result.
    assert torch.equal(boss.add_noise(x0, noise, per_sample), want)
    # With a begin index every sample takes the begin sigma (before the first step) or the current one.
    boss.set_begin_index(1)
    stock.set_begin_index(1)
    assert torch.equal(boss.scale_noise(x0, per_sample, noise), stock.scale_noise(x0, per_sample, noise))
    v = randn(shape, dtype, 2)
    boss.step(v, boss.timesteps[1], x0)
    stock.step(v, stock.timesteps[1], x0)
    assert torch.equal(boss.scale_noise(x0, per_sample, noise), stock.scale_noise(x0, per_sample, noise))


# -- what the config may hold ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["invert_sigmas", "stochastic_sampling"])
def test_stepping_config_keys_refused_by_both_ways_in(key):
    """invert_sigmas (Mochi) and stochastic_sampling change the step itself: neither BossScheduler nor
    diffusers_sigmas can honour them, and both say so instead of dropping them."""
    config = FlowMatchEulerDiscreteScheduler(**{key: True}).config
    with pytest.raises(ValueError, match=key):
        BossScheduler.from_schedule(TIMES_CONTRACT, config)
    with pytest.raises(ValueError, match=key):
        BossScheduler.from_config(config, times=TIMES_CONTRACT.tolist())
    from boss_fast.integrations import diffusers_sigmas

    with pytest.raises(ValueError, match=key):
        diffusers_sigmas(TIMES_CONTRACT, config=config)


@pytest.mark.parametrize("key, value", [("use_karras_sigmas", True), ("use_exponential_sigmas", True),
                                        ("shift_terminal", 0.1), ("time_shift_type", "linear")])  # fmt: skip
def test_remapping_config_keys_are_kept_and_do_not_move_the_steps(key, value):
    """These only shape the stock scheduler's default sigmas, which BossScheduler replaces by the schedule's;
    it records them, so a swap back to the stock scheduler restores them."""
    stock = FlowMatchEulerDiscreteScheduler(**{key: value})
    boss = BossScheduler.from_schedule(TIMES_CONTRACT, stock.config)
    assert boss.config[key] == value
    boss.set_timesteps(K)
    np.testing.assert_array_equal(boss.sigmas.double().numpy(), 1.0 - TIMES_CONTRACT)
    assert FlowMatchEulerDiscreteScheduler.from_config(boss.config).config[key] == value


def test_from_config_without_a_schedule_is_refused():
    config = FlowMatchEulerDiscreteScheduler(shift=3.0).config
    with pytest.raises(ValueError, match=r"BossScheduler\.from_schedule"):
        BossScheduler.from_config(config)
    with pytest.raises(ValueError, match=r"BossScheduler\.from_schedule"):
        BossScheduler()


@pytest.mark.parametrize(
    "value, error, fragment",
    [
        ("abc", TypeError, "searched_shape must be a sequence of integers .* got 'abc'"),
        (["4", "8"], TypeError, "searched_shape entry must be an integer, got '4'"),
        ([4, 0, 8], ValueError, "searched_shape entry must be >= 1, got 0"),
    ],
)
def test_a_scheduler_config_with_a_bad_searched_shape_is_refused_by_name(tmp_path, value, error, fragment):
    """scheduler_config.json with searched_shape "abc" said "invalid literal for int()"."""
    sched = bf.Schedule(times=TIMES, indices=np.arange(5), cost=0.0, grid=TIMES, shape=(4, 8, 8))
    BossScheduler.from_schedule(sched, FlowMatchEulerDiscreteScheduler().config).save_pretrained(tmp_path)
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "searched_shape": value}))
    with pytest.raises(error, match=fragment):
        BossScheduler.from_pretrained(tmp_path)


def test_compatibles_swap_both_ways():
    stock = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.6,
                                            max_shift=1.2, use_karras_sigmas=True)  # fmt: skip
    boss = BossScheduler.from_config(stock.config, times=TIMES_CONTRACT.tolist())
    assert set(boss.compatibles) == {FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler}
    for cls in boss.compatibles:
        other = cls.from_config(boss.config)
        assert isinstance(other, cls) and other.config.shift == 3.0
        back = BossScheduler.from_config(other.config, times=TIMES_CONTRACT.tolist())
        back.set_timesteps(K)
        np.testing.assert_array_equal(back.sigmas.double().numpy(), 1.0 - TIMES_CONTRACT)
    # The stock config survives a round trip through BossScheduler key for key.
    again = FlowMatchEulerDiscreteScheduler.from_config(boss.config)
    assert {k: again.config[k] for k in stock.config} == dict(stock.config)


# -- save / load ------------------------------------------------------------------------------------------


def test_save_and_load_steps_alike(tmp_path):
    boss = BossScheduler.from_schedule(
        TIMES_CONTRACT, FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config
    )
    boss.set_timesteps(K)
    boss.save_pretrained(tmp_path)
    loaded = BossScheduler.from_pretrained(tmp_path)
    assert dict(loaded.config) == dict(boss.config)
    loaded.set_timesteps(K)
    x = randn((2, 4, 8, 8), torch.bfloat16, 0)
    for i, t in enumerate(loaded.timesteps):
        v = randn((2, 4, 8, 8), torch.bfloat16, i + 1)
        assert torch.equal(loaded.step(v, t, x).prev_sample, boss.step(v, boss.timesteps[i], x).prev_sample)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_pipeline_save_and_load_with_a_boss_scheduler(tmp_path):
    """A tiny random SD3 pipeline (no text encoders, no VAE, no downloads) saved with its BossScheduler and
    loaded by DiffusionPipeline.from_pretrained: the scheduler comes back as a BossScheduler with the same
    schedule and the pipeline's output is bitwise the same."""
    net = tiny_sd3_transformer()
    scheduler = BossScheduler.from_schedule(TIMES_CONTRACT, FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    nones = dict.fromkeys(["vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                           "text_encoder_3", "tokenizer_3"])  # fmt: skip
    pipe = StableDiffusion3Pipeline(transformer=net, scheduler=scheduler, **nones)
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path, **nones)
    assert isinstance(loaded.scheduler, BossScheduler)
    assert loaded.scheduler.config.times == TIMES_CONTRACT.tolist()

    def run(p):
        p.set_progress_bar_config(disable=True)
        embeds = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(1))
        pooled = torch.randn(1, 8, generator=torch.Generator().manual_seed(2))
        latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
        side = 8 * p.vae_scale_factor
        return p(prompt_embeds=embeds, pooled_prompt_embeds=pooled, guidance_scale=1.0, num_inference_steps=K,
                 height=side, width=side, latents=latents, output_type="latent").images  # fmt: skip

    with torch.no_grad():
        assert torch.equal(run(loaded), run(pipe))
    # And the swap the docs show: the stock scheduler back from the pipeline's BossScheduler config.
    loaded.scheduler = FlowMatchEulerDiscreteScheduler.from_config(loaded.scheduler.config)
    assert loaded.scheduler.config.shift == 3.0


# -- a schedule that starts later: the start rule travels with it ------------------------------------------

LATE_GRID = np.array([0.0, 0.2, 0.45, 0.7, 1.0])


def late(start: str = "noise") -> bf.Schedule:
    """A 3-step schedule that starts at t = 0.2 (a first sigma of 0.8) with the start rule ``start``."""
    return bf.Schedule(times=LATE_GRID[1:], indices=np.arange(1, 5), cost=0.0, grid=LATE_GRID, start=start)


def tiny_pipe(kind: str, scheduler) -> tuple:
    """An SD3 (4x8x8 latents, 64 px) or Flux (4 packed tokens of 16, 32 px) pipeline without text encoders
    or VAE, its call's keywords and the velocity its sampler steps (DiffusersVelocity of the same
    transformer)."""
    torch.manual_seed(0)
    if kind.startswith("sd3"):
        net = tiny_sd3_transformer()
        pipe = StableDiffusion3Pipeline(transformer=net, scheduler=scheduler, **dict.fromkeys(
            ["vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
             "tokenizer_3"]))  # fmt: skip
        embeds, pooled = torch.randn(1, 5, 16), torch.randn(1, 8)
        call = dict(guidance_scale=1.0, height=8 * pipe.vae_scale_factor, width=8 * pipe.vae_scale_factor)
        velocity = DiffusersVelocity(net, encoder_hidden_states=embeds, pooled_projections=pooled)
    else:
        net = tiny_flux_transformer()
        pipe = FluxPipeline(transformer=net, scheduler=scheduler, **dict.fromkeys(
            ["vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"]))  # fmt: skip
        embeds, pooled = torch.randn(1, 5, 16), torch.randn(1, 8)
        call = dict(guidance_scale=3.5, height=32, width=32)
        ids = {"txt_ids": torch.zeros(5, 3),
               "img_ids": FluxPipeline._prepare_latent_image_ids(2, 2, 2, "cpu", torch.float32)}  # fmt: skip
        velocity = DiffusersVelocity(net, timestep_scale=1.0, fixed=ids, encoder_hidden_states=embeds,
                                     pooled_projections=pooled, guidance=torch.full((1,), 3.5))  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    call.update(prompt_embeds=embeds.expand(2, -1, -1), pooled_prompt_embeds=pooled.expand(2, -1))
    return pipe, call, velocity


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("export", ["diffusers_sigmas", "BossScheduler"])
@pytest.mark.parametrize("kind", ["sd3_shift3", "sd3_dynamic", "flux"])
def test_a_later_start_round_trips_through_sd3_and_flux_pipelines(kind, export):
    """pipe(sigmas=diffusers_sigmas(sched), latents=z) and pipe.scheduler = BossScheduler.from_schedule(sched)
    start from z itself at the first sigma 0.8: the schedule's "noise" rule, bf.sample's result (the final
    latents before the VAE), and not the "scaled" rule's (0.8 z there)."""
    stock = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=kind != "sd3_shift3")
    shape = (4, 8, 8) if kind.startswith("sd3") else (4, 16)
    pipe, call, velocity = tiny_pipe(kind, stock)
    sched = late("noise")
    if export == "BossScheduler":
        pipe.scheduler = BossScheduler.from_schedule(sched, stock.config)
    else:
        call["sigmas"] = diffusers_sigmas(sched, mu=pipeline_mu(pipe, shape), config=stock.config)
        assert call["sigmas"][0] < 1.0
    latents = torch.randn(2, *shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = pipe(**call, num_inference_steps=3, latents=latents, output_type="latent").images
        want = bf.sample(velocity, latents, sched)
        scaled = bf.sample(velocity, latents, late("scaled"))
    np.testing.assert_allclose(pipe.scheduler.sigmas.double().numpy(), 1.0 - LATE_GRID[1:], atol=4 * EPS32)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)  # as test_boss_scheduler_equals_sample
    assert (out - scaled).abs().max() > 1e-2  # the start state is what decides


@pytest.mark.parametrize("config", [dict(shift=3.0), dict(use_dynamic_shifting=True)], ids=["shift3", "mu"])
def test_diffusers_sigmas_round_trip_the_shift_from_a_first_sigma_below_one(config):
    """The stock scheduler shifts every sigma it is given, the first (here 0.8) included: after its shift it
    steps at 1 - times from t = 0.2."""
    stock = FlowMatchEulerDiscreteScheduler(**config)
    mu = 0.9 if stock.config.use_dynamic_shifting else None
    sigmas = diffusers_sigmas(late("noise"), mu=mu, config=stock.config)
    np.testing.assert_allclose(stock_sigmas(stock, sigmas, mu), 1.0 - LATE_GRID[1:], rtol=0, atol=4 * EPS32)
    assert sigmas[0] < 1.0


def test_diffusers_refuses_a_scaled_start_by_name():
    """A pipeline starts from the unscaled noise: "scaled" above t = 0 is refused by both exports, naming the
    rule and what to do; at t = 0 ((1 - 0) x noise) and as plain times it is accepted."""
    for export in (lambda s: diffusers_sigmas(s, shift=3.0), BossScheduler.from_schedule):
        with pytest.raises(ValueError, match=r"start rule is 'scaled'.*diffusers pipeline.*--start noise"):
            export(late("scaled"))
    at_zero = bf.Schedule(times=TIMES, indices=np.arange(5), cost=0.0, grid=TIMES, start="scaled")
    assert diffusers_sigmas(at_zero, shift=3.0) == diffusers_sigmas(TIMES, shift=3.0)
    assert BossScheduler.from_schedule(at_zero).start == "scaled"
    assert diffusers_sigmas(late("scaled").times, shift=3.0) == diffusers_sigmas(late("noise"), shift=3.0)


def test_boss_scheduler_records_the_start_rule_and_keeps_its_parameters(tmp_path):
    """The rule rides in the config as a private key (not an __init__ parameter: the 17 stay), survives
    save_pretrained / from_pretrained, and a config whose rule a pipeline cannot honour is refused on load."""
    assert len(inspect.signature(BossScheduler.__init__).parameters) == 18  # self + 17
    assert BossScheduler.from_schedule(SCHED).start == "zero"
    assert BossScheduler.from_schedule(TIMES).start == "noise"  # bare times: the noise itself
    scheduler = BossScheduler.from_schedule(late("noise"), FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    scheduler.save_pretrained(tmp_path)
    loaded = BossScheduler.from_pretrained(tmp_path)
    assert loaded.start == "noise" and dict(loaded.config) == dict(scheduler.config)
    assert BossScheduler.from_config(scheduler.config).start == "noise"
    path = tmp_path / "scheduler_config.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in doc.items() if k != "_start_rule"}))  # saved before the key
    assert BossScheduler.from_pretrained(tmp_path).start == "noise"  # what every pipeline did with its times
    for rule, error in (("scaled", r"start rule is 'scaled'"), ("sideways", r"start rule.*'sideways'")):
        path.write_text(json.dumps({**doc, "_start_rule": rule}))
        with pytest.raises(ValueError, match=error):
            BossScheduler.from_pretrained(tmp_path)
