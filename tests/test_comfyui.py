"""The ComfyUI node pack (boss_fast/comfyui), loaded as ComfyUI loads a custom node folder (its __init__.py
executed as a module, NODE_CLASS_MAPPINGS read), with no ComfyUI installed."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
import torch

import boss_fast as bf
import boss_fast.comfyui

FOLDER = os.path.dirname(boss_fast.comfyui.__file__)
GRID = np.linspace(0.0, 1.0, 21)


def load_like_comfyui(folder: str):
    """ComfyUI's nodes.load_custom_node: spec_from_file_location(name, folder/__init__.py) with the folder as
    the package's search path, module_from_spec, sys.modules[name] = module, exec_module."""
    name = "boss_fast_custom_nodes"
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def run_node(module, **inputs):
    cls = module.NODE_CLASS_MAPPINGS["BossSchedule"]
    assert cls.RETURN_TYPES == ("SIGMAS",) and isinstance(cls.CATEGORY, str)
    assert set(cls.INPUT_TYPES()["required"]) == set(inputs)
    (sigmas,) = getattr(cls(), cls.FUNCTION)(**inputs)
    return sigmas


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A local schedule set (K = 1..4, with its cost table) on a 21-point grid and its 3-step schedule."""
    root = tmp_path_factory.mktemp("comfy")
    cost = np.triu(np.square(np.subtract.outer(GRID**2, GRID**2)), 1) + np.triu(np.ones((21, 21)), 1) * 1e-3
    sset = bf.schedules_from_cost(cost, 4, grid=GRID)
    sset.save(root / "set.json")
    sset[3].save(root / "k3.json")
    return root, sset


def test_node_output_is_one_minus_times(files):
    root, sset = files
    module = load_like_comfyui(FOLDER)
    assert module.NODE_DISPLAY_NAME_MAPPINGS["BossSchedule"] == "BOSS schedule"
    cases = [(root / "k3.json", 0, sset[3]), (root / "k3.json", 3, sset[3]), (root / "set.json", 2, sset[2]),
             (root / "set.json", 7, sset.resample(7))]  # fmt: skip
    for path, steps, sched in cases:
        sigmas = run_node(module, schedule_file=str(path), steps=steps, denoise=1.0)
        assert sigmas.dtype == torch.float32 and sigmas.ndim == 1
        assert torch.equal(sigmas, torch.tensor((1.0 - sched.times).tolist(), dtype=torch.float32))
        assert sigmas[-1] == 0 and torch.all(sigmas[1:] < sigmas[:-1])
    assert sset.resample(7).steps == 7 and 7 not in sset  # a K outside the set, from its resample


def test_denoise_as_align_your_steps(files):
    """ComfyUI's AlignYourStepsScheduler (comfy_extras/nodes_align_your_steps.py): below 1, total_steps =
    round(steps * denoise) and the output is the last total_steps + 1 sigmas; denoise <= 0 gives none."""
    root, sset = files
    module = load_like_comfyui(FOLDER)
    full = torch.tensor((1.0 - sset.resample(8).times).tolist(), dtype=torch.float32)
    for denoise in (0.5, 0.3, 0.99):
        got = run_node(module, schedule_file=str(root / "set.json"), steps=8, denoise=denoise)
        assert torch.equal(got, full[-(round(8 * denoise) + 1) :])
    assert len(run_node(module, schedule_file=str(root / "set.json"), steps=8, denoise=0.0)) == 0


def test_node_errors(files, tmp_path):
    root, _ = files
    module = load_like_comfyui(FOLDER)
    with pytest.raises(ValueError, match="schedule set .* set steps to a K"):
        run_node(module, schedule_file=str(root / "set.json"), steps=0, denoise=1.0)
    with pytest.raises(ValueError, match="3-step schedule, asked for 5"):
        run_node(module, schedule_file=str(root / "k3.json"), steps=5, denoise=1.0)
    (tmp_path / "other.json").write_text('{"format": "something"}')
    with pytest.raises(ValueError, match="neither a boss_fast schedule nor a schedule set"):
        run_node(module, schedule_file=str(tmp_path / "other.json"), steps=0, denoise=1.0)
    cls = module.NODE_CLASS_MAPPINGS["BossSchedule"]
    assert cls.IS_CHANGED(str(root / "k3.json"), 0, 1.0) != cls.IS_CHANGED(str(root / "set.json"), 0, 1.0)


# -- the start rule: ComfyUI starts a flow model at sigmas[0] from sigmas[0] * noise ("scaled") -------------

COMFYUI_TREE = "/tmp/comfyui_28"  # a ComfyUI source tree (../shared/comfyui/README.md); absent: skipped
LATE = [5, 9, 14, 20]  # a 3-step schedule from t = 0.25 (sigma 0.75)


def later(root, start: str, indices=LATE):
    """A schedule from t = GRID[indices[0]] with the start rule ``start``, saved; its path and itself."""
    idx = np.array(indices)
    sched = bf.Schedule(times=GRID[idx], indices=idx, cost=0.0, grid=GRID, start=start)
    sched.save(root / f"{start}-{indices[0]}.json")
    return root / f"{start}-{indices[0]}.json", sched


def comfyui_flow_euler(velocity, noise, sigmas, sampling):
    """ComfyUI's Euler sampler on a flow model from an empty latent, written from its code (comfy/samplers.py
    KSAMPLER.sample, comfy/k_diffusion/sampling.py sample_euler): x = noise_scaling(sigmas[0], noise, 0);
    each step d = (x - denoised) / sigma with denoised = calculate_denoised(sigma, output, x), where a flow
    model's output is noise - x0, minus the velocity at t = 1 - sigma; x += d (sigma' - sigma); at the end
    inverse_noise_scaling(sigmas[-1], x). ``sampling``: the object holding those three methods."""
    x = sampling.noise_scaling(sigmas[0], noise, torch.zeros_like(noise))
    for sigma, after in zip(sigmas[:-1], sigmas[1:], strict=True):
        output = -velocity(x, (1.0 - sigma).expand(len(x)))
        d = (x - sampling.calculate_denoised(sigma, output, x)) / sigma
        x = x + d * (after - sigma)
    return sampling.inverse_noise_scaling(sigmas[-1], x)


class ConstArithmetic:
    """ComfyUI's CONST model sampling (flow models) as boss_fast reads it: the arithmetic only."""

    def noise_scaling(self, sigma, noise, latent_image):
        return sigma * noise + (1.0 - sigma) * latent_image

    def calculate_denoised(self, sigma, model_output, model_input):
        return model_input - model_output * sigma

    def inverse_noise_scaling(self, sigma, latent):
        return latent / (1.0 - sigma)


def real_const():
    """comfy.model_sampling.CONST from the real tree at COMFYUI_TREE (skipped when absent or unimportable)."""
    if not os.path.isdir(os.path.join(COMFYUI_TREE, "comfy")):
        pytest.skip(f"no ComfyUI tree at {COMFYUI_TREE}")
    sys.path.insert(0, COMFYUI_TREE)
    try:
        model_sampling = pytest.importorskip("comfy.model_sampling")
    finally:
        sys.path.remove(COMFYUI_TREE)
    return model_sampling.CONST()


@pytest.mark.parametrize("comfy", ["arithmetic", "real_tree"])
def test_the_node_under_comfyuis_rule_equals_sample_with_scaled(tmp_path, comfy):
    """The node's sigmas for a "scaled" schedule from t = 0.25, sampled as ComfyUI samples a flow model from
    an empty latent (start 0.75 x noise), give bf.sample with "scaled"; a "noise" schedule's would not."""
    sampling = real_const() if comfy == "real_tree" else ConstArithmetic()
    velocity = bf.models.load_bundled("gmm2d")
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    path, sched = later(tmp_path, "scaled")
    sigmas = run_node(load_like_comfyui(FOLDER), schedule_file=str(path), steps=0, denoise=1.0)
    got = comfyui_flow_euler(velocity, noise, sigmas, sampling)
    torch.testing.assert_close(got, bf.sample(velocity, noise, sched), rtol=1e-5, atol=1e-5)
    assert (got - bf.sample(velocity, noise, later(tmp_path, "noise")[1])).abs().max() > 1e-2
    start = sampling.noise_scaling(sigmas[0], noise, torch.zeros_like(noise))
    torch.testing.assert_close(start, bf.ode.start_state(noise, "scaled", 0.25), rtol=0, atol=0)


def test_the_node_refuses_another_rule_above_t_zero_by_name(tmp_path):
    """A "noise" (or "zero"-like) start above t = 0 would start ComfyUI from 0.75 x noise instead of the
    noise: refused, naming the rule and --start scaled; at t = 0 every rule is the noise itself; with
    denoise below 1 ComfyUI starts from its noised input image, not the schedule's start."""
    module = load_like_comfyui(FOLDER)
    path, sched = later(tmp_path, "noise")
    with pytest.raises(
        ValueError, match=r"noise-5.json: this schedule's start rule is 'noise'.*--start scaled"
    ):
        run_node(module, schedule_file=str(path), steps=0, denoise=1.0)
    half = run_node(module, schedule_file=str(path), steps=0, denoise=0.5)
    assert torch.equal(half, torch.tensor((1.0 - sched.times[-3:]).tolist(), dtype=torch.float32))
    for start in ("noise", "zero"):
        at_zero, sched = later(tmp_path, start, [0, 9, 14, 20])
        got = run_node(module, schedule_file=str(at_zero), steps=0, denoise=1.0)
        assert torch.equal(got, torch.tensor((1.0 - sched.times).tolist(), dtype=torch.float32))
    two = bf.Schedule(
        times=GRID[[5, 12, 20]], indices=np.array([5, 12, 20]), cost=0.0, grid=GRID, start="noise"
    )
    noise_set = bf.ScheduleSet([later(tmp_path, "noise", [5, 20])[1], two])
    noise_set.save(tmp_path / "set.json")
    with pytest.raises(ValueError, match=r"start rule is 'noise'"):
        run_node(module, schedule_file=str(tmp_path / "set.json"), steps=2, denoise=1.0)
