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
