"""The ComfyUI node pack (boss_fast/comfyui), loaded as ComfyUI loads a custom node folder (its __init__.py
executed as a module, NODE_CLASS_MAPPINGS read), with no ComfyUI installed: ComfyUI's ``folder_paths`` is
stood in for by ``fake_folder_paths`` (the few calls the pack makes, as ComfyUI 0.8.0's folder_paths.py
does them). scripts/check_comfyui_node.py runs the node in the real ComfyUI."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import types

import numpy as np
import pytest
import torch

import boss_fast as bf
import boss_fast.comfyui
from boss_fast.cli import main

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


def fake_folder_paths(models_dir, extra: dict[str, list[str]] | None = None) -> types.ModuleType:
    """ComfyUI's folder_paths as the pack uses it: models_dir, folder_names_and_paths, add_model_folder_path
    (is_default puts a path first; a new name gets no extension filter), get_folder_paths, get_filename_list
    (every file under each folder, followed links, relative names, filtered by extension, sorted). ``extra``:
    what extra_model_paths.yaml added before the custom nodes loaded."""
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(models_dir)
    fp.folder_names_and_paths = {}

    def add_model_folder_path(name, path, is_default=False):
        if name not in fp.folder_names_and_paths:
            fp.folder_names_and_paths[name] = ([path], set())
            return
        paths = fp.folder_names_and_paths[name][0]
        if path in paths:
            paths.remove(path)
        paths.insert(0 if is_default else len(paths), path)

    def get_filename_list(name):
        folders, extensions = fp.folder_names_and_paths[name]
        found = set()
        for folder in folders:
            for dirpath, _, names in os.walk(folder, followlinks=True):
                found.update(os.path.relpath(os.path.join(dirpath, n), folder) for n in names)
        return sorted(f for f in found if not extensions or os.path.splitext(f)[1].lower() in extensions)

    fp.add_model_folder_path = add_model_folder_path
    fp.get_folder_paths = lambda name: fp.folder_names_and_paths[name][0][:]
    fp.get_filename_list = get_filename_list
    for name, paths in (extra or {}).items():
        for path in paths:
            add_model_folder_path(name, path)
    return fp


def in_comfyui(monkeypatch, models_dir, extra=None):
    """The pack loaded as inside ComfyUI (its folder_paths imported first), and that folder_paths."""
    fp = fake_folder_paths(models_dir, extra)
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    return load_like_comfyui(FOLDER), fp


def placed_defaults(module) -> dict:
    """The inputs of a freshly placed node: each widget's default, a drop-down's first entry."""
    required = module.NODE_CLASS_MAPPINGS["BossSchedule"].INPUT_TYPES()["required"]
    return {
        name: spec[0][0] if isinstance(spec[0], list) else spec[1]["default"]
        for name, spec in required.items()
    }


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


@pytest.fixture(scope="module")
def readme_set(tmp_path_factory):
    """The set the README's ComfyUI paragraph writes (global, K = 1..8, ComfyUI's start rule, no cost table),
    by its command."""
    path = tmp_path_factory.mktemp("readme") / "my_model.schedules.json"
    argv = ["schedule", "--model", "gmm2d_narrow", "--max-steps", "8", "--grid", "50", "--num-samples", "32",
            "--start", "scaled"]  # fmt: skip
    assert main([*argv, "--out", str(path)]) == 0
    return path


def test_node_output_is_one_minus_times(files):
    root, sset = files
    module = load_like_comfyui(FOLDER)
    assert module.NODE_DISPLAY_NAME_MAPPINGS["BossSchedule"] == "BOSS schedule"
    cases = [(root / "k3.json", 0, sset[3]), (root / "k3.json", 3, sset[3]), (root / "set.json", 2, sset[2]),
             (root / "set.json", 0, sset[4]), (root / "set.json", 7, sset.resample(7))]  # fmt: skip
    for path, steps, sched in cases:
        sigmas = run_node(module, schedule_file=str(path), steps=steps, denoise=1.0)
        assert sigmas.dtype == torch.float32 and sigmas.ndim == 1
        assert torch.equal(sigmas, torch.tensor((1.0 - sched.times).tolist(), dtype=torch.float32))
        assert sigmas[-1] == 0 and torch.all(sigmas[1:] < sigmas[:-1])
    assert sset.resample(7).steps == 7 and 7 not in sset  # beyond the set: the DP on its cost table


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


def test_a_freshly_placed_node_runs_on_the_readme_set(readme_set, tmp_path, monkeypatch):
    """The README's set in models/boss_schedules, the node placed with its defaults (the first file, steps 0,
    denoise 1): the set's largest budget, as ``boss-fast sigmas --steps 8`` prints it."""
    folder = tmp_path / "models" / "boss_schedules"
    folder.mkdir(parents=True)
    (folder / readme_set.name).write_bytes(readme_set.read_bytes())
    module, _ = in_comfyui(monkeypatch, tmp_path / "models")
    inputs = placed_defaults(module)
    assert inputs == {"schedule_file": readme_set.name, "steps": 0, "denoise": 1.0}
    assert module.NODE_CLASS_MAPPINGS["BossSchedule"].VALIDATE_INPUTS(inputs["schedule_file"], 0) is True
    sset = bf.ScheduleSet.load(readme_set)
    assert sset.max_steps == 8 and sset.cost_table is None
    want = torch.tensor((1.0 - sset[8].times).tolist(), dtype=torch.float32)
    assert torch.equal(run_node(module, **inputs), want)


def test_schedule_files_come_from_the_models_folder(files, tmp_path, monkeypatch):
    """Registered as ComfyUI's model folder boss_schedules (.json only, first before extra_model_paths'
    folders), listed in the drop-down, a relative name read there and never against the working directory,
    an absolute path as given."""
    root, sset = files
    models, extra = tmp_path / "models", tmp_path / "elsewhere"
    (models / "boss_schedules" / "sub").mkdir(parents=True)
    extra.mkdir()
    (models / "boss_schedules" / "k3.json").write_bytes((root / "k3.json").read_bytes())
    (models / "boss_schedules" / "sub" / "set.json").write_bytes((root / "set.json").read_bytes())
    (models / "boss_schedules" / "notes.txt").write_text("not a schedule")
    (extra / "other_set.json").write_bytes((root / "set.json").read_bytes())
    module, fp = in_comfyui(monkeypatch, models, {"boss_schedules": [str(extra)]})
    assert fp.folder_names_and_paths["boss_schedules"] == (
        [str(models / "boss_schedules"), str(extra)],
        {".json"},
    )
    required = module.NODE_CLASS_MAPPINGS["BossSchedule"].INPUT_TYPES()["required"]
    assert required["schedule_file"][0] == ["k3.json", "other_set.json", os.path.join("sub", "set.json")]
    decoy = tmp_path / "cwd"
    decoy.mkdir()
    (decoy / "k3.json").write_bytes((root / "set.json").read_bytes())  # a set where the server runs
    monkeypatch.chdir(decoy)
    k3 = torch.tensor((1.0 - sset[3].times).tolist(), dtype=torch.float32)
    assert torch.equal(run_node(module, schedule_file="k3.json", steps=0, denoise=1.0), k3)
    assert torch.equal(run_node(module, schedule_file=str(root / "k3.json"), steps=0, denoise=1.0), k3)
    assert len(run_node(module, schedule_file="other_set.json", steps=0, denoise=1.0)) == 5
    cls = module.NODE_CLASS_MAPPINGS["BossSchedule"]
    assert cls.IS_CHANGED("k3.json", 0, 1.0) == cls.IS_CHANGED(str(root / "k3.json"), 0, 1.0) != ""
    assert cls.IS_CHANGED("k3.json", 0, 1.0) != cls.IS_CHANGED(str(decoy / "k3.json"), 0, 1.0)
    with pytest.raises(FileNotFoundError, match="missing.json: a relative name is looked up in the boss_s"):
        run_node(module, schedule_file="missing.json", steps=0, denoise=1.0)
    assert "missing.json" in cls.VALIDATE_INPUTS("missing.json", 0)
    monkeypatch.delitem(sys.modules, "folder_paths")  # outside ComfyUI: no folder, so no relative names
    with pytest.raises(FileNotFoundError, match="not running inside ComfyUI"):
        run_node(load_like_comfyui(FOLDER), schedule_file="k3.json", steps=0, denoise=1.0)


def test_the_steps_maximum_is_what_the_files_give(files, readme_set, tmp_path, monkeypatch):
    """The widget's maximum is the largest K any listed file gives (a single schedule its K, a global set
    its largest budget, a set with a cost table its grid points - 1); each file's own limit is refused by
    name, before the node runs (VALIDATE_INPUTS) and when it runs."""
    root, _ = files
    folder = tmp_path / "models" / "boss_schedules"
    folder.mkdir(parents=True)
    module, _ = in_comfyui(monkeypatch, tmp_path / "models")
    cls = module.NODE_CLASS_MAPPINGS["BossSchedule"]
    assert cls.INPUT_TYPES()["required"]["steps"][1]["max"] == 0  # no file: only "the file's own K"
    for name, path, top in (("k3.json", root / "k3.json", 3), ("readme.json", readme_set, 8),
                            ("set.json", root / "set.json", 20)):  # fmt: skip
        (folder / name).write_bytes(path.read_bytes())
        assert cls.INPUT_TYPES()["required"]["steps"][1]["max"] == top
        assert cls.VALIDATE_INPUTS(name, top) is True and cls.VALIDATE_INPUTS(name, None) is True
        assert len(run_node(module, schedule_file=name, steps=top, denoise=1.0)) == top + 1
        message = cls.VALIDATE_INPUTS(name, top + 1)
        assert isinstance(message, str) and f"steps {top + 1}: {name} gives K = 0..{top}" in message
        with pytest.raises(ValueError, match=f"steps {top + 1}: .*{name}"):
            run_node(module, schedule_file=name, steps=top + 1, denoise=1.0)
    (folder / "broken.json").write_text("{")  # listed, unreadable: refused when chosen, maximum unchanged
    assert cls.INPUT_TYPES()["required"]["steps"][1]["max"] == 20
    assert "broken.json: not valid JSON" in cls.VALIDATE_INPUTS("broken.json", 0)


def _cli_sigmas(capsys, path, steps, fmt):
    """``boss-fast sigmas PATH --steps K --format fmt`` in this process: float32 sigmas, None if refused."""
    code = main(["sigmas", str(path), "--steps", str(steps), "--format", fmt])
    out, err = capsys.readouterr()
    if code != 0:
        assert code == 2 and "error:" in err and "Traceback" not in err
        return None
    if fmt == "json":
        return torch.tensor(json.loads(out)["sigmas"], dtype=torch.float32)
    return torch.tensor([float(v) for v in out.strip().split(", ")], dtype=torch.float32)


def _node_sigmas(module, path, steps):
    try:
        return run_node(module, schedule_file=str(path), steps=steps, denoise=1.0)
    except ValueError:
        return None


def test_the_node_and_the_cli_agree_on_every_k(files, readme_set, tmp_path, capsys):
    """Both routes the README offers give the same float32 sigmas, bit for bit, for every K, or both refuse:
    a set's budgets; beyond them, with a cost table, the DP; without one, refused; a single schedule's K."""
    root, sset = files
    bf.ScheduleSet(sset.values()).save(tmp_path / "no_table.json")
    module = load_like_comfyui(FOLDER)
    agreed = {}
    for path in (root / "set.json", tmp_path / "no_table.json", root / "k3.json", readme_set):
        for k in range(1, 52):
            node = _node_sigmas(module, path, k)
            for fmt in ("json", "comfyui"):
                cli = _cli_sigmas(capsys, path, k, fmt)
                assert (node is None) == (cli is None), (path.name, k, fmt)
                assert node is None or torch.equal(node, cli), (path.name, k, fmt)
            if node is not None:
                agreed.setdefault(path.name, []).append(k)
    assert agreed == {"set.json": list(range(1, 21)), "no_table.json": [1, 2, 3, 4], "k3.json": [3],
                      readme_set.name: list(range(1, 9))}  # fmt: skip


@pytest.mark.parametrize("steps", ["3", None, 2.0, True, -1, math.nan])
def test_get_sigmas_refuses_bad_steps_by_name(files, steps):
    """As an API caller or a linked node could pass them; refused before the file is looked up (ComfyUI
    itself converts a widget's "3" to 3 before the node runs: that 3 is fine)."""
    module = load_like_comfyui(FOLDER)
    with pytest.raises((TypeError, ValueError), match=r"steps must be an integer: 0 for the file's own K .*"):
        run_node(module, schedule_file="/no/such/file.json", steps=steps, denoise=1.0)


@pytest.mark.parametrize("denoise", [math.nan, "0.5", None, math.inf, 1.5, -0.1, True])
def test_get_sigmas_refuses_bad_denoise_by_name(files, denoise):
    module = load_like_comfyui(FOLDER)
    with pytest.raises((TypeError, ValueError), match=r"denoise must be a number in \[0, 1\] .*got"):
        run_node(module, schedule_file="/no/such/file.json", steps=0, denoise=denoise)


def test_node_errors(files, tmp_path):
    root, _ = files
    module = load_like_comfyui(FOLDER)
    assert (
        len(run_node(module, schedule_file=str(root / "k3.json"), steps=int("3"), denoise=float("0.5"))) == 3
    )
    with pytest.raises(ValueError, match="steps 5: .*k3.json is a 3-step schedule"):
        run_node(module, schedule_file=str(root / "k3.json"), steps=5, denoise=1.0)
    (tmp_path / "other.json").write_text('{"format": "something"}')
    with pytest.raises(ValueError, match="neither a boss_fast schedule nor a schedule set"):
        run_node(module, schedule_file=str(tmp_path / "other.json"), steps=0, denoise=1.0)
    for name in ("", "   ", None):
        with pytest.raises(
            ValueError, match="schedule_file must name a schedule JSON in ComfyUI/models/boss_s"
        ):
            run_node(module, schedule_file=name, steps=0, denoise=1.0)
    with pytest.raises(FileNotFoundError, match="schedule_file /no/such.json: no such file"):
        run_node(module, schedule_file="/no/such.json", steps=0, denoise=1.0)
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
