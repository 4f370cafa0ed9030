"""BossScheduler against the contract of diffusers' stock FlowMatchEulerDiscreteScheduler.

Both schedulers are set to the same sigmas (dyadic ones, exact in float32, so the stock scheduler's float32
arithmetic and the schedule's float64 times give the same float32 tensors) and every method a pipeline
calls is run on both: the results must be bitwise equal. Then what BossScheduler refuses, config swaps
through diffusers' compatibility machinery, and save/load of the scheduler and of a pipeline holding it.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from _tiny_sd3 import tiny_sd3_transformer  # noqa: E402
from diffusers import (  # noqa: E402
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    StableDiffusion3Pipeline,
)
from diffusers.schedulers.scheduling_flow_match_euler_discrete import (  # noqa: E402
    FlowMatchEulerDiscreteSchedulerOutput,
)

from boss_fast.integrations.diffusers import BossScheduler  # noqa: E402

TIMES = np.array([0.0, 0.125, 0.3125, 0.625, 1.0])  # K = 4; 1 - t and (1 - t) * 1000 are exact in float32
K = len(TIMES) - 1
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# An image batch (B, C, H, W), Flux's packed tokens (B, N, C), a video batch (B, C, F, H, W).
SHAPES = {"4d": (3, 4, 8, 8), "packed3d": (3, 16, 64), "video5d": (2, 4, 3, 8, 8)}


def pair(**config) -> tuple[BossScheduler, FlowMatchEulerDiscreteScheduler]:
    """A BossScheduler and a stock scheduler (shift 1: it keeps the sigmas it is given) at TIMES."""
    stock = FlowMatchEulerDiscreteScheduler(**config)
    boss = BossScheduler.from_schedule(TIMES, stock.config)
    stock.set_timesteps(sigmas=(1.0 - TIMES[:-1]).tolist())
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
        torch.testing.assert_close(got, x + float(TIMES[i] - TIMES[i + 1]) * v)
        x = got
    # A float timestep (the value, not the tensor) is found the same way.
    fresh, _ = pair()
    v = randn((2, 3), torch.float32, 9)
    got = fresh.step(v, float(fresh.timesteps[start]), torch.zeros(2, 3)).prev_sample
    torch.testing.assert_close(got, float(TIMES[start] - TIMES[start + 1]) * v)


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
        sigma = 1.0 - TIMES[i]
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
        BossScheduler.from_schedule(TIMES, config)
    with pytest.raises(ValueError, match=key):
        BossScheduler.from_config(config, times=TIMES.tolist())
    from boss_fast.integrations import diffusers_sigmas

    with pytest.raises(ValueError, match=key):
        diffusers_sigmas(TIMES, config=config)


@pytest.mark.parametrize("key, value", [("use_karras_sigmas", True), ("use_exponential_sigmas", True),
                                        ("shift_terminal", 0.1), ("time_shift_type", "linear")])  # fmt: skip
def test_remapping_config_keys_are_kept_and_do_not_move_the_steps(key, value):
    """These only shape the stock scheduler's default sigmas, which BossScheduler replaces by the schedule's;
    it records them, so a swap back to the stock scheduler restores them."""
    stock = FlowMatchEulerDiscreteScheduler(**{key: value})
    boss = BossScheduler.from_schedule(TIMES, stock.config)
    assert boss.config[key] == value
    boss.set_timesteps(K)
    np.testing.assert_array_equal(boss.sigmas.double().numpy(), 1.0 - TIMES)
    assert FlowMatchEulerDiscreteScheduler.from_config(boss.config).config[key] == value


def test_from_config_without_a_schedule_is_refused():
    config = FlowMatchEulerDiscreteScheduler(shift=3.0).config
    with pytest.raises(ValueError, match=r"BossScheduler\.from_schedule"):
        BossScheduler.from_config(config)
    with pytest.raises(ValueError, match=r"BossScheduler\.from_schedule"):
        BossScheduler()


def test_compatibles_swap_both_ways():
    stock = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.6,
                                            max_shift=1.2, use_karras_sigmas=True)  # fmt: skip
    boss = BossScheduler.from_config(stock.config, times=TIMES.tolist())
    assert set(boss.compatibles) == {FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler}
    for cls in boss.compatibles:
        other = cls.from_config(boss.config)
        assert isinstance(other, cls) and other.config.shift == 3.0
        back = BossScheduler.from_config(other.config, times=TIMES.tolist())
        back.set_timesteps(K)
        np.testing.assert_array_equal(back.sigmas.double().numpy(), 1.0 - TIMES)
    # The stock config survives a round trip through BossScheduler key for key.
    again = FlowMatchEulerDiscreteScheduler.from_config(boss.config)
    assert {k: again.config[k] for k in stock.config} == dict(stock.config)


# -- save / load ------------------------------------------------------------------------------------------


def test_save_and_load_steps_alike(tmp_path):
    boss = BossScheduler.from_schedule(
        TIMES, FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config
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
    scheduler = BossScheduler.from_schedule(TIMES, FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    nones = dict.fromkeys(["vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                           "text_encoder_3", "tokenizer_3"])  # fmt: skip
    pipe = StableDiffusion3Pipeline(transformer=net, scheduler=scheduler, **nones)
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path, **nones)
    assert isinstance(loaded.scheduler, BossScheduler)
    assert loaded.scheduler.config.times == TIMES.tolist()

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
