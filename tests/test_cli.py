"""The command line, at small sizes (the demo itself: tests/test_demo.py).

User errors and Ctrl-C run the real command in a subprocess: exit code, ONE line on stderr, no traceback,
nothing left behind.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import boss_fast
import boss_fast as bf
from boss_fast import Schedule, schedules_from_cost
from boss_fast.cli import _straighten_settings, build_parser, main
from boss_fast.grids import uniform_grid
from boss_fast.integrations.sigmas import comfyui_text
from boss_fast.models import load_bundled

HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None
needs_diffusers = pytest.mark.skipif(not HAS_DIFFUSERS, reason="needs diffusers")
if HAS_DIFFUSERS:
    from _tiny_pipelines import save_tiny_flux, save_tiny_sd3
    from safetensors.torch import save_file

    from boss_fast.integrations import pipelines

# The subprocess imports the same boss_fast as this test run.
PACKAGE_PARENT = str(Path(boss_fast.__file__).resolve().parents[1])


def run_cli(argv, cwd, prelude="", timeout=600, **popen):
    """``boss-fast *argv`` in a fresh interpreter without the working directory on sys.path (as the console
    script runs); ``prelude`` runs first (e.g. hiding an optional package)."""
    code = (
        "import sys\n"
        "sys.path[:] = [p for p in sys.path if p not in ('', '.')]\n"
        f"{prelude}\n"
        "from boss_fast.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def assert_one_line_error(proc, fragment, code=2):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert fragment in lines[0], lines[0]


def listing(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


def small_schedule(path, grid=10, indices=(0, 4, 10)):
    times = uniform_grid(grid)
    idx = np.asarray(indices)
    Schedule(times=times[idx], indices=idx, cost=0.0, grid=times).save(path)
    return str(path)


def test_straighten_options_left_out_take_the_settings_defaults():
    """No --lr: the settings' default for the kind of run (full or LoRA); no --num-pairs: theirs too."""
    base = ["straighten", "--model", "mlp2d", "--schedule", "s.json", "--out", "w.safetensors"]
    full = _straighten_settings(build_parser().parse_args(base), 100)
    lora = _straighten_settings(build_parser().parse_args([*base, "--lora-rank", "4"]), 100)
    given = build_parser().parse_args(
        [*base, "--lora-rank", "4", "--lr", "5e-4", "--pair-steps", "25", "--pair-spacing", "adaptive"]
    )
    assert (full.lr, lora.lr) == (bf.StraightenSettings().lr, bf.StraightenSettings(lora_rank=4).lr)
    assert full.num_pairs == bf.StraightenSettings().num_pairs
    chosen = _straighten_settings(given, 100)
    assert (chosen.lr, chosen.pair_steps, chosen.pair_spacing) == (5e-4, 25, "adaptive")
    cheap = bf.StraightenSettings()  # no --pair-* option: the settings' default teacher
    assert (full.pair_steps, full.pair_solver, full.pair_spacing) == (
        cheap.pair_steps, cheap.pair_solver, cheap.pair_spacing,
    )  # fmt: skip
    own = _straighten_settings(
        build_parser().parse_args([*base, "--pair-steps", "grid", "--pair-solver", "schedule"]), 100
    )
    assert (own.pair_steps, own.pair_solver, own.pair_spacing) == (None, None, "uniform")  # BOSS's own
    assert full.inputs == cheap.inputs == "sampler"  # no --inputs: the settings' default
    published = _straighten_settings(build_parser().parse_args([*base, "--inputs", "teacher"]), 100)
    assert published.inputs == "teacher"


def test_dp_example_prints_every_budget(capsys):
    assert main(["dp-example", "--grid", "50", "--max-steps", "6"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6
    assert lines[0].split()[0] == "1" and lines[-1].split()[0] == "6"


def test_schedule_then_sample_bundled(tmp_path, capsys):
    out = tmp_path / "k3.json"
    argv = ["schedule", "--model", "gmm2d", "--steps", "3", "--grid", "20", "--num-samples", "16"]
    assert main([*argv, "--no-progress", "--out", str(out)]) == 0
    sched = Schedule.load(out)
    # the default search's start is free ("noise"): times[0] is where it starts
    assert sched.steps == 3 and sched.start == "noise" and sched.times[-1] == 1.0
    samples = tmp_path / "x.npy"
    assert (
        main(["sample", "--model", "gmm2d", "--schedule", str(out), "--num", "5", "--out", str(samples)]) == 0
    )
    assert np.load(samples).shape == (5, 2)


def test_schedule_importable_model(tmp_path, monkeypatch):
    (tmp_path / "my_flow.py").write_text(
        "import torch\ndef velocity(x, t):\n    return -x * t.reshape(-1, *([1] * (x.ndim - 1)))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "s.json"
    argv = ["schedule", "--model", "my_flow:velocity", "--shape", "3,4", "--steps", "2", "--grid", "10"]
    assert main([*argv, "--num-samples", "4", "--no-progress", "--out", str(out)]) == 0
    assert Schedule.load(out).steps == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "nope"], "--model nope: unknown model"),
        (["--model", "json:dumps_nothing"], "--model json:dumps_nothing: json has no attribute"),
        (["--model", "no_such_module_xyz:f"], "cannot import no_such_module_xyz"),
        (["--model", "json:dumps"], "--shape is required"),
        (["--model", "json:dumps", "--shape", "3,x"], "comma-separated"),
        (["--model", "json:dumps", "--shape", "3"], "--model json:dumps fails on one sample of shape (3,)"),
    ],
)
def test_schedule_bad_model(tmp_path, capsys, argv, message):
    assert main(["schedule", *argv, "--steps", "2", "--out", str(tmp_path / "s.json")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_schedule_bad_steps_is_a_clear_error(tmp_path, capsys):
    argv = ["schedule", "--model", "gmm2d", "--steps", "30", "--grid", "20", "--num-samples", "4"]
    assert main([*argv, "--no-progress", "--out", str(tmp_path / "s.json")]) == 2
    assert "steps" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_sample_refuses_corrupt_schedule(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "boss_fast.schedule", "version": 1, "times": [0.0')
    assert main(["sample", "--model", "gmm2d", "--schedule", str(bad), "--out", str(tmp_path / "x.npy")]) == 2
    assert "bad.json" in capsys.readouterr().err


def _file(tmp_path, name="afile"):
    (tmp_path / name).write_text("x")
    return str(tmp_path / name)


def _unwritable_dir(tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits; a read-only filesystem stops it
        if not Path("/sys").is_dir() or os.access("/sys", os.W_OK) and _can_write("/sys"):
            pytest.skip("no unwritable directory for root here")
        return "/sys"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return str(locked)


def _can_write(directory):
    try:
        with open(os.path.join(directory, ".boss_fast_probe"), "wb"):
            pass
    except OSError:
        return False
    os.unlink(os.path.join(directory, ".boss_fast_probe"))
    return True


SCHED = ["--schedule", "{sched}"]
STRAIGHTEN = [
    "straighten",
    "--model",
    "mlp2d",
    *SCHED,
    "--num-pairs",
    "8",
    "--iters",
    "2",
    "--batch-size",
    "4",
]
STRAIGHTEN += ["--warmup", "1", "--no-progress"]
SCHEDULE = [
    "schedule",
    "--model",
    "gmm2d",
    "--steps",
    "2",
    "--grid",
    "10",
    "--num-samples",
    "4",
    "--no-progress",
]
SAMPLE = ["sample", "--model", "mlp2d", *SCHED, "--num", "2"]

CASES = {
    # output paths, checked before any computation
    "demo out is a file": (["demo", "--out", "{file}"], "--out {file}: is a file, not a directory"),
    "demo out under a file": (["demo", "--out", "{file}/rep"], "is under {file}, a file, not a directory"),
    "demo out unwritable": (["demo", "--out", "{locked}/rep"], "cannot write in {locked}"),
    "schedule out is a directory": ([*SCHEDULE, "--out", "{tmp}"], "--out {tmp}: is a directory"),
    "schedule out under a file": ([*SCHEDULE, "--out", "{file}/s.json"], "{file} is a file, not a directory"),
    "schedule out unwritable": ([*SCHEDULE, "--out", "{locked}/s.json"], "cannot write in {locked}"),
    "schedule out in a missing dir": ([*SCHEDULE, "--out", "{tmp}/no/s.json"], "{tmp}/no does not exist"),
    "schedule checkpoint is a dir": (
        [*SCHEDULE, "--checkpoint", "{tmp}", "--out", "{tmp}/s.json"],
        "--checkpoint {tmp}: is a directory",
    ),
    "sample out is a directory": ([*SAMPLE, "--out", "{tmp}"], "--out {tmp}: is a directory"),
    "sample png under a file": ([*SAMPLE, "--out", "{tmp}/x.npy", "--png", "{file}/g.png"], "--png"),
    "straighten out is a directory": ([*STRAIGHTEN, "--out", "{tmp}"], "--out {tmp}: is a directory"),
    "checkpoint dir is a file": (
        [*STRAIGHTEN, "--checkpoint-dir", "{file}", "--out", "{tmp}/w.safetensors"],
        "--checkpoint-dir {file}: is a file, not a directory",
    ),
    "cache dir is a file": (
        [*STRAIGHTEN, "--cache-dir", "{file}", "--out", "{tmp}/w.safetensors"],
        "--cache-dir {file}: is a file, not a directory",
    ),
    # straightening settings, refused by option (StraightenSettings.ema -> --ema) before the model loads
    "straighten ema out of range": (
        [*STRAIGHTEN, "--ema", "1.5", "--out", "{tmp}/w.safetensors"],
        "--ema must be in [0, 1), got 1.5",
    ),
    "straighten lr not positive": (
        [*STRAIGHTEN, "--lr", "0", "--out", "{tmp}/w.safetensors"],
        "--lr must be > 0, got 0.0",
    ),
    "straighten adaptive spacing without steps": (
        [*STRAIGHTEN, "--pair-steps", "grid", "--pair-spacing", "adaptive", "--out", "{tmp}/w.safetensors"],
        "--pair-spacing 'adaptive' cuts pair_steps fixed steps",
    ),
    "straighten pair steps zero": (
        [*STRAIGHTEN, "--pair-steps", "0", "--out", "{tmp}/w.safetensors"],
        "--pair-steps 0: must be >= 1",
    ),
    # inputs
    "schedule path is a directory": (
        ["sample", "--model", "mlp2d", "--schedule", "{tmp}", "--out", "{tmp}/x.npy"],
        "--schedule {tmp}: is a directory, not a file",
    ),
    "schedule path is missing": (
        ["sample", "--model", "mlp2d", "--schedule", "{tmp}/none.json", "--out", "{tmp}/x.npy"],
        "--schedule {tmp}/none.json: no such file",
    ),
    # devices
    "device foo": ([*SCHEDULE, "--device", "foo", "--out", "{tmp}/s.json"], "--device foo: not a device"),
    "device cuda without CUDA": (
        [*SCHEDULE, "--device", "cuda", "--out", "{tmp}/s.json"],
        "--device cuda: CUDA is not available",
    ),
    "cuda_graph without CUDA": (
        [*SAMPLE, "--mode", "cuda_graph", "--out", "{tmp}/x.npy"],
        "--mode cuda_graph: needs CUDA",
    ),
    # corrupt files
    "corrupt straighten checkpoint": (
        [*STRAIGHTEN, "--checkpoint-dir", "{ckpt}", "--out", "{tmp}/w.safetensors"],
        "straighten.pt is unreadable",
    ),
    "corrupt cost checkpoint": (
        [*SCHEDULE, "--objective", "local", "--checkpoint", "{file}", "--out", "{tmp}/s.json"],
        "cost checkpoint {file} is unreadable",
    ),
    # the full DP: the default coarse route first runs (and checkpoints beside it) its coarse pass
    "corrupt own-state checkpoint": (
        [*SCHEDULE, "--dp", "full", "--checkpoint", "{file}", "--out", "{tmp}/s.json"],
        "own-state checkpoint {file} is unreadable",
    ),
}
NEEDS_NO_CUDA = {"device cuda without CUDA", "cuda_graph without CUDA"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_user_error_is_one_line_and_leaves_nothing(tmp_path, case):
    if case in NEEDS_NO_CUDA and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    argv, fragment = CASES[case]
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "straighten.pt").write_bytes(b"not a checkpoint")
    names = {
        "tmp": str(tmp_path),
        "file": _file(tmp_path),
        "sched": small_schedule(tmp_path / "k2.json"),
        "ckpt": str(ckpt),
        "locked": _unwritable_dir(tmp_path) if "{locked}" in " ".join(argv) else "",
    }
    before = listing(tmp_path)
    proc = run_cli([a.format(**names) for a in argv], cwd=tmp_path)
    assert_one_line_error(proc, fragment.format(**names))
    assert listing(tmp_path) == before


MISSING = {
    "torchdiffeq": (
        [*SCHEDULE, "--solver", "dopri5", "--out", "{tmp}/s.json"],
        "--solver dopri5 needs the optional 'torchdiffeq' package",
        "'boss_fast[reference]'",
    ),
    "peft": (
        [*STRAIGHTEN, "--lora-rank", "2", "--out", "{tmp}/w.safetensors"],
        "--lora-rank needs the optional 'peft' package",
        "'boss_fast[lora]'",
    ),
    "diffusers": (
        [
            "schedule",
            "--model",
            "uses_diffusers:velocity",
            "--shape",
            "2",
            "--steps",
            "2",
            "--out",
            "{tmp}/s.json",
        ],
        "--model uses_diffusers:velocity: cannot import uses_diffusers",
        "'boss_fast[diffusers]'",
    ),
}


@pytest.mark.parametrize("package", sorted(MISSING))
def test_a_missing_optional_dependency_names_the_extra(tmp_path, package):
    argv, fragment, extra = MISSING[package]
    (tmp_path / "uses_diffusers.py").write_text(
        "from boss_fast.integrations.diffusers import DiffusersVelocity\nvelocity = None\n"
    )
    names = {"tmp": str(tmp_path), "sched": small_schedule(tmp_path / "k2.json")}
    before = listing(tmp_path)
    # None in sys.modules is what an absent package looks like to an import.
    proc = run_cli(
        [a.format(**names) for a in argv], cwd=tmp_path, prelude=f"sys.modules[{package!r}] = None"
    )
    assert_one_line_error(proc, fragment)
    assert extra in proc.stderr
    assert listing(tmp_path) == before


def test_a_module_in_the_working_directory_is_importable_and_its_errors_are_one_line(tmp_path):
    (tmp_path / "my_flow.py").write_text("def velocity(x, t):\n    return -x\n")
    (tmp_path / "broken.py").write_text("x = 1\nraise RuntimeError('broken at import')\n")
    argv = ["schedule", "--shape", "3", "--steps", "2", "--grid", "10", "--num-samples", "4", "--no-progress"]
    ok = run_cli([*argv, "--model", "my_flow:velocity", "--out", "s.json"], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert Schedule.load(tmp_path / "s.json").shape == (3,)
    bad = run_cli([*argv, "--model", "broken:velocity", "--out", "t.json"], cwd=tmp_path)
    assert_one_line_error(bad, "importing broken raised RuntimeError: broken at import")
    assert "broken.py:2" in bad.stderr
    assert not (tmp_path / "t.json").exists()


def test_sample_takes_the_shape_from_the_schedule(tmp_path):
    (tmp_path / "flow3.py").write_text("def velocity(x, t):\n    return -x\n")
    argv = [
        "--model",
        "flow3:velocity",
        "--steps",
        "2",
        "--grid",
        "10",
        "--num-samples",
        "4",
        "--no-progress",
    ]
    assert run_cli(["schedule", *argv, "--shape", "3,2", "--out", "s.json"], cwd=tmp_path).returncode == 0
    smp = ["sample", "--model", "flow3:velocity", "--schedule", "s.json", "--num", "5", "--out", "x.npy"]
    proc = run_cli(smp, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "x.npy").shape == (5, 3, 2)


def test_sample_warns_in_one_line_about_another_models_schedule(tmp_path):
    out = tmp_path / "k2.json"
    assert main([*SCHEDULE[:2], "mlp2d", *SCHEDULE[3:], "--out", str(out)]) == 0
    assert Schedule.load(out).shape == (2,)
    proc = run_cli(["sample", "--model", "gmm2d", "--schedule", str(out), "--out", "x.npy"], cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "x.npy").exists()
    assert proc.stderr.strip().splitlines() == [
        "boss-fast sample: warning: the schedule was searched on another model (its fingerprint differs)"
    ]


def test_ctrl_c_exits_130_in_one_line_with_no_output_and_a_loadable_checkpoint(tmp_path):
    sched = small_schedule(tmp_path / "k2.json", grid=20, indices=(0, 8, 20))
    ckpt = tmp_path / "ckpt" / "straighten.pt"
    argv = ["straighten", "--model", "mlp2d", "--schedule", sched, "--num-pairs", "64", "--batch-size", "8"]
    argv += ["--iters", "100000000", "--warmup", "1", "--no-progress", "--checkpoint-dir", str(ckpt.parent)]
    argv += ["--out", str(tmp_path / "w.safetensors")]
    code = "import sys\nfrom boss_fast.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")])),
    }
    # A shell's background job inherits SIGINT ignored, and Python then keeps it ignored: restore the default,
    # as an interactive terminal has it.
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 300
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ckpt.exists(), "no checkpoint was written"
        time.sleep(1.0)  # well into the next checkpoint interval or past it: either way atomic
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    assert lines[0].startswith("boss-fast straighten: interrupted; no partial output was written")
    assert not (tmp_path / "w.safetensors").exists()
    assert listing(tmp_path / "ckpt") == ["straighten.pt"]  # no temporary left beside it
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert int(state["step"]) >= 200 and int(state["step"]) % 200 == 0


# ------------------------------------------------------------------------------------------ sigmas


@pytest.fixture(scope="module")
def sigma_files(tmp_path_factory):
    """A local schedule set (K = 1..4) of gmm2d on a 20-point grid, and its 3-step schedule alone."""
    root = tmp_path_factory.mktemp("sigmas")
    sset = boss_fast.optimal_schedules(
        load_bundled("gmm2d"), (2,), 4, boss_fast.SearchSettings(objective="local", grid=20, num_samples=16)
    )
    sset.save(root / "set.json")
    sset[3].save(root / "k3.json")
    return root, sset


def _printed(capsys, argv):
    assert main(["sigmas", *argv]) == 0
    return capsys.readouterr().out


def test_sigmas_formats(sigma_files, capsys):
    root, sset = sigma_files
    want = (1.0 - sset[3].times).tolist()
    text = _printed(capsys, [str(root / "set.json"), "--steps", "3"])
    assert [float(v) for v in text.split()] == want and want[-1] == 0.0 and want == sorted(want)[::-1]
    assert _printed(capsys, [str(root / "k3.json")]) == text  # a single schedule prints the same
    comfy = _printed(capsys, [str(root / "k3.json"), "--format", "comfyui"])
    assert np.array_equal(
        np.float32([float(v) for v in comfy.split(", ")]), np.float32(want)
    )  # ComfyUI's float32
    assert (
        "e" not in comfy.lower()
    )  # plain decimals (test_integrations_sigmas.py: what each ComfyUI parser reads)
    doc = json.loads(_printed(capsys, [str(root / "set.json"), "--steps", "3", "--format", "json"]))
    assert doc == {"steps": 3, "sigmas": want, "times": sset[3].times.tolist(), "start": sset[3].start}
    rows = _printed(capsys, [str(root / "set.json"), "--steps", "3", "--format", "csv"]).splitlines()
    assert rows[0] == "step,time,sigma" and [float(r.split(",")[2]) for r in rows[1:]] == want


@pytest.mark.parametrize("dynamic", [False, True], ids=["shift3", "mu"])
def test_sigmas_for_diffusers_step_the_stock_scheduler_at_the_schedule(
    sigma_files, capsys, tmp_path, dynamic
):
    """What `--format diffusers --config` prints, given to diffusers' own scheduler with that config."""
    pytest.importorskip("diffusers")
    from diffusers import FlowMatchEulerDiscreteScheduler

    root, sset = sigma_files
    stock = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=dynamic)
    stock.save_config(tmp_path)  # scheduler_config.json, as a pipeline folder holds it
    config = str(tmp_path / "scheduler_config.json")
    extra = ["--mu", "0.8"] if dynamic else []
    out = _printed(
        capsys, [str(root / "set.json"), "--steps", "4", "--format", "diffusers", "--config", config, *extra]
    )
    sigmas = json.loads(out)
    assert len(sigmas) == 4
    stock.set_timesteps(sigmas=sigmas, mu=0.8 if dynamic else None)
    want = 1.0 - sset[4].times
    eps = np.finfo(np.float32).eps
    np.testing.assert_allclose(stock.sigmas.double().numpy(), want, rtol=0, atol=4 * eps)
    np.testing.assert_allclose(stock.timesteps.double().numpy(), want[:-1] * 1000, rtol=0, atol=4000 * eps)
    # Negative control: the plain sigmas (1 - t) are shifted elsewhere by that scheduler.
    stock.set_timesteps(sigmas=want[:-1].tolist(), mu=0.8 if dynamic else None)
    assert np.abs(stock.sigmas.double().numpy() - want).max() > 0.05


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["set.json"], "holds a schedule set (K = 1..4; up to 20 re-solved on its cost table): give"),
        (["set.json", "--steps", "21"], "--steps 21: set.json gives K = 1..20 ("),
        (["global.json", "--steps", "5"], "--steps 5: global.json holds K = 1..4 and no cost table"),
        (["global.json"], "holds a schedule set (K = 1..4): give --steps K"),
        (["set.json", "--steps", "0"], "--steps 0: must be >= 1"),
        (["k3.json", "--steps", "4"], "--steps 4: k3.json is a 3-step schedule"),
        (["k3.json", "--format", "comfyui", "--shift", "3"], "apply to --format diffusers only"),
        (["k3.json", "--format", "diffusers", "--config", "karras.json"], "use_karras_sigmas=True"),
        (["k3.json", "--format", "diffusers", "--config", "stoch.json"], "stochastic_sampling=True"),
        (["k3.json", "--format", "diffusers", "--config", "dynamic.json"], "pass the pipeline's mu"),
        (
            ["k3.json", "--format", "diffusers", "--config", "nothere.json"],
            "--config nothere.json: no such file",
        ),
        (["other.json"], "neither a boss_fast schedule nor a schedule set"),
        (["tampered.json", "--steps", "2"], "sha256 does not match"),
    ],
)
def test_sigmas_refuses_by_name(sigma_files, tmp_path, argv, message):
    root, sset = sigma_files
    for name in ("set.json", "k3.json"):
        (tmp_path / name).write_bytes((root / name).read_bytes())
    boss_fast.ScheduleSet(sset.values()).save(tmp_path / "global.json")  # no cost table
    for name, config in (
        ("karras", {"use_karras_sigmas": True}),
        ("stoch", {"stochastic_sampling": True}),
        ("dynamic", {"use_dynamic_shifting": True, "shift": 3.0}),
    ):
        (tmp_path / f"{name}.json").write_text(json.dumps(config))
    (tmp_path / "other.json").write_text('{"format": "something"}')
    doc = json.loads((root / "set.json").read_text())
    doc["grid"][1] += 1e-9
    (tmp_path / "tampered.json").write_text(json.dumps(doc))
    assert_one_line_error(run_cli(["sigmas", *argv], tmp_path), message)


LATE_GRID = np.linspace(0.0, 1.0, 21)


def _late(folder, start: str) -> tuple[str, boss_fast.Schedule]:
    """A 3-step schedule of the 20-step grid from t = 0.25 with the start rule ``start``, saved."""
    idx = np.array([5, 9, 14, 20])
    sched = boss_fast.Schedule(times=LATE_GRID[idx], indices=idx, cost=0.0, grid=LATE_GRID, start=start)
    sched.save(folder / f"{start}.json")
    return str(folder / f"{start}.json"), sched


def test_sigmas_formats_honour_the_start_rule(tmp_path, capsys):
    """--format diffusers expresses "noise" (a first sigma below 1: the pipeline's noise is the state there)
    and refuses "scaled"; --format comfyui the other way round; json carries the rule."""
    noise, late_noise = _late(tmp_path, "noise")
    scaled, _ = _late(tmp_path, "scaled")
    first = json.loads(_printed(capsys, [noise, "--format", "diffusers", "--shift", "3"]))[0]
    assert 0.0 < first < 1.0
    assert json.loads(_printed(capsys, [noise, "--format", "json"]))["start"] == "noise"
    assert _printed(capsys, [scaled, "--format", "comfyui"]).strip() == comfyui_text(late_noise.sigmas())
    for path, fmt, rule, remedy in ((noise, "comfyui", "noise", "--start scaled"),
                                    (scaled, "diffusers", "scaled", "--start noise")):  # fmt: skip
        assert main(["sigmas", path, "--format", fmt]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and f"start rule is '{rule}'" in lines[0] and remedy in lines[0], lines


def test_schedule_start_flag_is_recorded_and_sample_honours_it(tmp_path, capsys):
    """schedule --start writes the rule into the file (default: the library's); sample starts from the rule's
    state, as bf.sample on the loaded schedule does."""
    from boss_fast.search import DEFAULT_START

    argv = [
        "schedule",
        "--model",
        "gmm2d",
        "--steps",
        "2",
        "--grid",
        "12",
        "--num-samples",
        "8",
        "--no-progress",
    ]
    assert main([*argv, "--start", "scaled", "--out", str(tmp_path / "s.json")]) == 0
    assert "start scaled" in capsys.readouterr().out
    assert boss_fast.Schedule.load(tmp_path / "s.json").start == "scaled"
    assert main([*argv, "--out", str(tmp_path / "d.json")]) == 0
    assert boss_fast.Schedule.load(tmp_path / "d.json").start == DEFAULT_START["global"]
    with pytest.raises(SystemExit):
        main([*argv, "--start", "sideways", "--out", str(tmp_path / "x.json")])
    assert "invalid choice: 'sideways'" in capsys.readouterr().err
    noise = boss_fast.seeded_noise((2,), 0, 8, seed=0)
    out = {}
    for start in ("scaled", "noise"):
        path, sched = _late(tmp_path, start)
        assert main(["sample", "--model", "gmm2d", "--schedule", path, "--num", "8", "--out",
                     str(tmp_path / f"{start}.npy")]) == 0  # fmt: skip
        out[start] = np.load(tmp_path / f"{start}.npy")
        np.testing.assert_array_equal(
            out[start], boss_fast.sample(load_bundled("gmm2d"), noise, sched).numpy()
        )
    assert np.abs(out["scaled"] - out["noise"]).max() > 1e-2


def test_schedule_polish_flag_reaches_the_search_and_is_refused_by_name(tmp_path, capsys):
    """--polish none gives the DP's own schedule, the default (start) a polished one, equal to the library's;
    --polish start with --start zero is one line naming the flag."""
    argv = ["schedule", "--model", "gmm2d", "--steps", "3", "--grid", "20", "--num-samples", "16",
            "--no-progress"]  # fmt: skip
    for polish in (None, "none"):
        flags = [] if polish is None else ["--polish", polish]
        assert main([*argv, *flags, "--out", str(tmp_path / f"{polish}.json")]) == 0
        got = boss_fast.Schedule.load(tmp_path / f"{polish}.json")
        settings = boss_fast.SearchSettings(grid=20, num_samples=16, polish=polish)
        want = boss_fast.optimal_schedules(load_bundled("gmm2d"), (2,), 3, settings)[3]
        np.testing.assert_array_equal(got.indices, want.indices)
    capsys.readouterr()
    assert main([*argv, "--polish", "start", "--start", "zero", "--out", str(tmp_path / "x.json")]) == 2
    assert (
        "--polish: polish='start' moves the start knot, and start 'zero' pins it" in capsys.readouterr().err
    )


def test_schedule_max_steps_writes_a_set(tmp_path, capsys):
    out = tmp_path / "set.json"
    argv = ["schedule", "--model", "gmm2d", "--max-steps", "3", "--grid", "12", "--num-samples", "8"]
    assert main([*argv, "--no-progress", "--out", str(out)]) == 0
    sset = boss_fast.ScheduleSet.load(out)
    assert list(sset) == [1, 2, 3] and sset.objective == "global"
    assert capsys.readouterr().out.count("-step global schedule") == 3


def test_schedule_auto_samples_and_coarse_dp(tmp_path, capsys):
    out = tmp_path / "set.json"
    argv = ["schedule", "--model", "gmm2d", "--max-steps", "3", "--grid", "20", "--num-samples", "auto"]
    assert main([*argv, "--dp", "coarse", "--no-progress", "--out", str(out)]) == 0
    sset = boss_fast.ScheduleSet.load(out)
    # the held-out rule: 32 noises' schedules within 2% of 64's on noises 64 .. 127, which neither used
    assert sset[3].num_samples == 128 and list(sset) == [1, 2, 3]
    with pytest.raises(SystemExit):
        main([*argv[:-1], "many", "--out", str(tmp_path / "x.json")])
    assert "expected an integer or 'auto'" in capsys.readouterr().err


def test_schedule_dry_run_prints_the_bill_and_searches_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["schedule", "--model", "gmm2d", "--max-steps", "3", "--grid", "12", "--num-samples", "8"]
    assert main([*argv, "--dry-run"]) == 0
    text = capsys.readouterr().out
    bill = bf.search_bill(load_bundled("gmm2d"), (2,), 3, bf.SearchSettings(grid=12, num_samples=8))
    assert not bill.exact  # the default polish's moves depend on the model: a bound
    evals = (
        f"model evaluations: at most {bill.evaluations:,} in all, {bill.per_noise:,.1f} per noise (8 noises)"
    )
    assert evals in text
    for line in ("memory, search device:", "memory, host:", "memory, disk:", "one model call of 256 rows:"):
        assert line in text
    assert "projected wall time:" in text and listing(tmp_path) == []
    assert main([*argv, "--dry-run", "--out", "s.json"]) == 0 and listing(tmp_path) == []  # --out unwritten
    assert main([*argv, "--dp", "coarse", "--num-samples", "auto", "--dry-run"]) == 0
    assert "model evaluations: at most" in capsys.readouterr().out


def test_schedule_autocast_is_deterministic_and_writes_float32_schedules(tmp_path):
    argv = ["schedule", "--model", "digits_dit", "--max-steps", "2", "--grid", "6", "--num-samples", "4"]
    found = []
    for name in ("a.json", "b.json"):
        out = tmp_path / name
        assert main([*argv, "--autocast", "bfloat16", "--no-progress", "--out", str(out)]) == 0
        found.append(boss_fast.ScheduleSet.load(out))
    for k in (1, 2):
        assert found[0][k].indices.tolist() == found[1][k].indices.tolist()
        assert found[0][k].cost == found[1][k].cost


def test_schedule_store_flag_gives_the_same_schedules_from_every_store(tmp_path):
    argv = ["schedule", "--model", "gmm2d", "--max-steps", "3", "--grid", "16", "--num-samples", "12"]
    found = {}
    for store in ("device", "host", "disk"):
        out = tmp_path / f"{store}.json"
        assert main([*argv, "--batch-size", "5", "--store", store, "--no-progress", "--out", str(out)]) == 0
        found[store] = boss_fast.ScheduleSet.load(out)
    for k in (1, 2, 3):
        assert found["host"][k].indices.tolist() == found["device"][k].indices.tolist()
        assert found["disk"][k].cost == found["device"][k].cost  # same rows, same sums: the same bits


# From test_cli_refusals.py: Nothing silently wrong (command-line side): an exception inside the user's
# model, a non-finite or misshapen

MODELS = """
import torch
from torch import nn

calls = {"n": 0}


def raises_runtime(x, t):  # fine on the start-up probe (one sample), fails on the first real call
    calls["n"] += 1
    if calls["n"] > 1:
        raise RuntimeError("out of memory (pretend)")
    return -x


def raises_key(x, t):
    calls["n"] += 1
    if calls["n"] > 1:
        return {}["missing"]
    return -x


class Indexes(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.n = nn.Linear(2, 2), 0

    def forward(self, x, t):
        self.n += 1
        return self.lin(x) if self.n == 1 else x[:, [5]]


indexes = Indexes()


def nan_later(x, t):
    return torch.where(t[:, None] > 0.3, torch.full_like(x, float("nan")), -x)


def narrows_later(x, t):
    return -x if float(t[0]) < 0.3 else -x[:, :1]
"""
SCHEDULE_REFUSALS = [
    "schedule",
    "--shape",
    "2",
    "--steps",
    "2",
    "--grid",
    "10",
    "--num-samples",
    "4",
    "--no-progress",
]
SCHEDULE_AUTO = [*SCHEDULE_REFUSALS[:-2], "auto", "--no-progress"]
SAMPLE_REFUSALS = ["sample", "--shape", "2", "--schedule", "k3.json", "--num", "4", "--out", "x.npy"]

CASES_REFUSALS = {
    # an exception inside the user's model, after the probe: the model and the call, in one line
    "schedule global, RuntimeError": (
        [*SCHEDULE_REFUSALS, "--model", "models:raises_runtime", "--out", "s.json"],
        # the default coarse route's first call: its coarse pass's teacher on ceil(0.35 x 4) = 2 noises
        "--model models:raises_runtime raised RuntimeError at t = 0.0 on a batch of shape (2, 2): out of",
    ),
    "schedule local, KeyError": (
        [*SCHEDULE_REFUSALS, "--objective", "local", "--model", "models:raises_key", "--out", "s.json"],
        "--model models:raises_key raised KeyError at t = 0.0 on a batch of shape (4, 2): 'missing'",
    ),
    "schedule local, IndexError in a module": (
        [*SCHEDULE_REFUSALS, "--objective", "local", "--model", "models:indexes", "--out", "s.json"],
        "--model models:indexes raised IndexError at t = 0.0 on a batch of shape (4, 2)",
    ),
    "straighten, IndexError in the copy it trains": (
        [
            "straighten",
            "--model",
            "models:indexes",
            "--schedule",
            "k3.json",
            "--shape",
            "2",
            "--num-pairs",
            "8",
        ]
        + ["--iters", "2", "--batch-size", "4", "--warmup", "1", "--no-progress", "--out", "w.safetensors"],
        "--model models:indexes raised IndexError at t = ",
    ),
    "sample, RuntimeError": (
        [*SAMPLE_REFUSALS, "--model", "models:raises_runtime"],
        "raised RuntimeError at t = 0.0",
    ),
    # the sampler's checks: a NaN after the first step, a (B, 1) output broadcast into the state
    "sample, NaN later": (
        [*SAMPLE_REFUSALS, "--model", "models:nan_later"],
        "non-finite values in step 1, from t = 0.4 to t = 1.0",
    ),
    "sample, narrows later": (
        [*SAMPLE_REFUSALS, "--model", "models:narrows_later"],
        "velocity returned shape (4, 1) at t = 0.4 (step 1), expected the input's (4, 2)",
    ),
    # sizes and flags refused before any work
    "dp-example, a grid no machine holds": (
        ["dp-example", "--grid", "10000000", "--max-steps", "2"],
        "--grid 10000000: the example's 10000001 x 10000001 cost matrices would need at least 14901",
    ),
    "demo, eval-samples 0": (
        ["demo", "--eval-samples", "0", "--out", "rep"],
        "--eval-samples 0: must be >= 2",
    ),
    "schedule, empty out": ([*SCHEDULE_REFUSALS, "--model", "gmm2d", "--out", ""], "--out: an empty path"),
}


# Refused before any model is loaded or any work starts: run in this process through main() (the same code
# path, without an interpreter start each): exit code, one stderr line, no exception, nothing written.
IN_PROCESS = {
    "sample, num 0": (
        [*SAMPLE_REFUSALS[:-4], "--num", "0", "--out", "x.npy", "--model", "gmm2d"],
        "--num 0: must be",
    ),
    # the search's settings, built in one place and refused naming the flag
    "schedule, max-samples without auto": (
        [*SCHEDULE_REFUSALS, "--model", "gmm2d", "--max-samples", "64", "--out", "s.json"],
        "--max-samples: max_samples caps num_samples='auto', got num_samples=4",
    ),
    "schedule, max-samples below the first round": (
        [*SCHEDULE_AUTO, "--model", "gmm2d", "--max-samples", "8", "--out", "s.json"],
        "--max-samples: max_samples must be >= 32, got 8",
    ),
    "schedule, coarse dp of the local objective": (
        [*SCHEDULE_REFUSALS, "--model", "gmm2d", "--dp", "coarse", "--objective", "local", "--out", "s.json"],
        "--dp: dp='coarse' is a route to objective='global'",
    ),
    "schedule, a backend of the global objective": (
        [*SCHEDULE_REFUSALS, "--model", "gmm2d", "--backend", "numpy", "--out", "s.json"],
        "--backend: backend selects the Bellman DP's kernel of objective='local'",
    ),
    "schedule, autocast with dopri5": (
        [
            *SCHEDULE_REFUSALS,
            "--model",
            "gmm2d",
            "--autocast",
            "bfloat16",
            "--solver",
            "dopri5",
            "--out",
            "s.json",
        ],
        "--autocast: autocast=torch.bfloat16 with solver='dopri5'",
    ),
    "schedule, autocast of a float64 model": (
        [*SCHEDULE_REFUSALS, "--model", "gmm2d", "--autocast", "float16", "--out", "s.json"],
        "autocast=torch.float16 needs float32 states",
    ),
    "schedule, no out and no dry run": (
        [*SCHEDULE_REFUSALS, "--model", "gmm2d"],
        "--out is required (the schedule JSON to write), except with --dry-run",
    ),
    "demo, grid without num-samples": (
        ["demo", "--grid", "50", "--out", "rep"],
        "--grid sets every model's search: give --num-samples too",
    ),
    # sigmas: extreme shifts, foreign configs, an out-of-range number in a set file
    "sigmas shift 1e308": (
        ["sigmas", "k3.json", "--format", "diffusers", "--shift", "1e308"],
        "sigmas[0] = inf",
    ),
    "sigmas mu 710": (
        ["sigmas", "k3.json", "--format", "diffusers", "--mu", "710"],
        "e^mu overflows float64",
    ),
    "sigmas mu -800": (
        ["sigmas", "k3.json", "--format", "diffusers", "--mu", "-800"],
        "e^mu underflows to 0",
    ),
    "sigmas linear mu 1e308": (
        ["sigmas", "k3.json", "--format", "diffusers", "--mu", "1e308", "--config", "linear.json"],
        "mu = 1e+308 (linear time shift): the stock scheduler cannot step at this schedule",
    ),
    "sigmas Euler config": (
        ["sigmas", "k3.json", "--format", "diffusers", "--config", "euler.json"],
        "_class_name is 'EulerDiscreteScheduler', not a flow-match scheduler",
    ),
    "sigmas null shift": (
        ["sigmas", "k3.json", "--format", "diffusers", "--config", "null.json"],
        "the scheduler config's shift must be a real number, got None",
    ),
    "sigmas set with 1e999": (["sigmas", "huge.json", "--steps", "2"], "huge.json: grid[1] = 1e999"),
}


def _folder(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    grid = uniform_grid(10)
    idx = np.array([0, 4, 10])
    Schedule(times=grid[idx], indices=idx, cost=0.0, grid=grid).save(tmp_path / "k3.json")
    (tmp_path / "euler.json").write_text(json.dumps({"_class_name": "EulerDiscreteScheduler", "shift": 3.0}))
    (tmp_path / "null.json").write_text(json.dumps({"shift": None}))
    linear = {"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True}
    (tmp_path / "linear.json").write_text(json.dumps({**linear, "time_shift_type": "linear"}))
    cost = np.triu(np.square(np.subtract.outer(np.arange(11.0), np.arange(11.0))), 1)
    schedules_from_cost(cost, 3, grid=grid).save(tmp_path / "set.json")
    doc = json.loads((tmp_path / "set.json").read_text())
    (tmp_path / "huge.json").write_text(json.dumps(doc).replace(json.dumps(doc["grid"][1]), "1e999", 1))


@pytest.mark.parametrize("case", sorted(CASES_REFUSALS))
def test_each_refusal_is_one_line_exit_2_and_leaves_nothing(tmp_path, case):
    argv, fragment = CASES_REFUSALS[case]
    _folder(tmp_path)
    before = listing(tmp_path)
    proc = run_cli(argv, cwd=tmp_path)
    assert_one_line_error(proc, fragment)
    assert [p for p in listing(tmp_path) if not p.startswith("__pycache__")] == before


def test_boss_fast_debug_shows_the_traceback(tmp_path, monkeypatch):
    _folder(tmp_path)
    monkeypatch.setenv("BOSS_FAST_DEBUG", "1")
    proc = run_cli([*SAMPLE_REFUSALS, "--model", "models:raises_runtime"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "RuntimeError: out of memory (pretend)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("boss-fast sample: error: --model models:")


@pytest.mark.parametrize("case", sorted(IN_PROCESS))
def test_each_early_refusal_is_one_line_exit_2_and_leaves_nothing(tmp_path, monkeypatch, capsys, case):
    argv, fragment = IN_PROCESS[case]
    _folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], lines
    assert listing(tmp_path) == before


# From test_cli_pipeline.py: `boss-fast schedule --pipeline` end to end on tiny random SD3 and Flux
# pipelines built offline and saved

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
    settings = bf.SearchSettings(grid=5, num_samples=3, batch_size=2, start="noise")  # --pipeline's default
    sset = bf.optimal_schedules(target.velocity, target.shape, 2, settings)
    return pipe, cond, target, sset


@needs_diffusers
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
        assert got[k].shape == target.shape and got[k].mu == target.mu and got[k].start == "noise"
    assert target.shape == ((4, 8, 8) if kind == "sd3" else (4, 16))
    assert (target.mu is None) == (kind == "sd3")  # Flux always passes mu; SD3 without dynamic shifting not
    # ComfyUI starts from sigmas[0] * noise: a "noise" schedule is its sigmas only when it starts at t = 0.
    at_zero = got[2].times[0] == 0.0
    comfy_line = bf_comfy(got[2]) if at_zero else "(this schedule's start rule is 'noise'"
    assert "K = 2:" in text and "comfyui:   " + comfy_line in text
    diffusers_line = next(
        line for line in text.splitlines() if line.startswith("  diffusers:") and "=2," in line
    )
    assert "num_inference_steps=2, sigmas=[" in diffusers_line
    # The printed sigmas, given to the pipeline's own stock scheduler with its mu, step at the schedule.
    values = [float(v) for v in diffusers_line.split("sigmas=[")[1].rstrip("]").split(", ")]
    pipe.scheduler.set_timesteps(sigmas=values, mu=target.mu)
    np.testing.assert_allclose(pipe.scheduler.sigmas.double().numpy(), got[2].sigmas(), atol=1e-6)
    # The sigmas command reads the same file.
    if at_zero:
        comfy = run(capsys, ["sigmas", str(out), "--steps", "2", "--format", "comfyui"]).strip()
        assert comfy == bf_comfy(got[2])


def bf_comfy(sched):
    return comfyui_text(sched.sigmas())


@needs_diffusers
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


@needs_diffusers
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_schedule_pipeline_dry_run_prints_the_bill(saved, capsys, tmp_path):
    root, sd3, _ = saved
    argv = ["schedule", "--pipeline", sd3, "--prompts", str(root / "prompts.txt"), "--guidance", "4.5",
            "--height", "64", "--width", "64", "--dry-run", "--dp", "full", *SEARCH, *LENGTH]  # fmt: skip
    text = run(capsys, argv)
    # the full DP on grid 5 (6 points), per noise: the Heun teacher's 2 x 5 calls and the DP's 5 + 4 sources
    # at K = 2 (the pipeline's start rule "noise": level 1 from each of the 5 points below the last), 19, and
    # the start polish's bound, 7 K for K = 1, 2 (probed on every noise): 40
    assert "model evaluations: at most 120 in all, 40.0 per noise (3 noises)" in text
    assert "projected wall time:" in text and not list(tmp_path.iterdir())


@needs_diffusers
def test_pipeline_errors(saved, capsys, tmp_path):
    root, sd3, flux = saved
    out = str(tmp_path / "x.json")
    cases = [
        (["--pipeline", sd3, "--out", out, "--steps", "2"], "needs one of --prompts FILE"),
        (["--pipeline", sd3, "--prompts", str(tmp_path / "no"), "--out", out, "--steps", "2"], "no such"),
        (["--pipeline", sd3, "--prompts", str(root / "prompts.txt"), "--shape", "4,8,8", "--out", out,
          "--steps", "2"], "latent shape follows"),
        (["--pipeline", sd3, "--prompts", str(root / "prompts.txt"), "--height", "60", "--out", out,
          "--steps", "2"], "height must be a positive multiple of 16"),
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


def _not_called(what):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} ran: the refusal came after work")

    return refuse


def _pipeline_refusal(capsys, argv, fragment, command="schedule"):
    """main() in this process: exit 2 and the error as the last stderr line (diffusers' loading bars and
    transformers' notices may come before it); a traceback would propagate as the exception itself."""
    assert main([command, *argv]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith(f"boss-fast {command}: error:"), err
    assert fragment in last, last
    return last


@needs_diffusers
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_pipeline_inputs_that_tracebacked_are_one_line_refusals(saved, capsys, tmp_path, monkeypatch):
    """Round three's probes, each a traceback (or a late, unclear error) on the former main."""
    root, sd3, flux = saved
    out = str(tmp_path / "x.json")
    prompts = ["--prompts", str(root / "prompts.txt"), *LENGTH]
    tail = ["--out", out, "--steps", "2", "--grid", "4", "--num-samples", "2", "--no-progress"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "model_index.json").write_text("{}")  # was KeyError '_class_name' inside diffusers
    _pipeline_refusal(capsys, ["--pipeline", str(empty), *prompts, *tail], "model_index.json: no _class_name")
    good = tmp_path / "good.safetensors"
    save_file({"prompt_embeds": torch.zeros(2, 85, 16), "pooled_prompt_embeds": torch.zeros(2, 8)}, str(good))
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "text.safetensors").write_text("not safetensors\n")
    for name in ("cut", "text"):  # were SafetensorError tracebacks
        path = str(tmp_path / f"{name}.safetensors")
        argv = ["--pipeline", sd3, "--embeddings", path, "--guidance", "1", *tail]
        _pipeline_refusal(capsys, argv, f"--embeddings {path}: not a readable safetensors file")
    (tmp_path / "binary.txt").write_bytes(b"a red cat\n\xff\xfe\x85\n")  # was a bare codec message
    argv = ["--pipeline", sd3, "--prompts", str(tmp_path / "binary.txt"), *tail]
    _pipeline_refusal(capsys, argv, f"--prompts {tmp_path / 'binary.txt'}: not UTF-8 text (byte 10")
    # Refused before the pipeline loads (guidance) or before a prompt is encoded (the size).
    monkeypatch.setattr(pipelines, "load_pipeline", _not_called("load_pipeline"))
    for path in (sd3, flux):  # were a RuntimeError overflow (Flux) and non-finite states mid-search (SD3)
        for value in ("1e308", "nan", "-1"):
            argv = ["--pipeline", path, *prompts, "--guidance", value, *tail]
            _pipeline_refusal(capsys, argv, "--guidance must be")
    _pipeline_refusal(capsys, ["--pipeline", sd3, *prompts, "--guidance", "1e308", *tail], "[0, 1000]")
    train = [
        "--schedule",
        small_schedule(tmp_path / "k3.json"),
        "--lora-rank",
        "2",
        "--out",
        str(tmp_path / "l"),
    ]
    argv = ["--pipeline", sd3, *prompts, "--guidance", "inf", *train, "--no-progress"]
    _pipeline_refusal(capsys, argv, "--guidance must be finite", command="straighten")
    monkeypatch.undo()
    monkeypatch.setattr(pipelines, "encode_prompts", _not_called("encode_prompts"))
    size = {
        sd3: "(the VAE's factor 8 x the transformer's patch size 2)",
        flux: "x Flux's 2 x 2 latent packing",
    }
    for path, why in size.items():  # SD3 was a convolution error: 8 / 8 = 1 latent row, patch 2
        argv = ["--pipeline", path, *prompts, "--height", "8", "--width", "64", *tail]
        last = _pipeline_refusal(capsys, argv, "--height must be a positive multiple of 16 for this pipeline")
        assert why in last and last.endswith("got 8"), last
        argv = ["--pipeline", path, *prompts, "--height", "64", "--width", "40", *tail]
        _pipeline_refusal(capsys, argv, "--width must be a positive multiple of 16")
    assert not (tmp_path / "x.json").exists()


@needs_diffusers
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_embeddings_whose_pooled_rows_do_not_pair_are_refused(saved, capsys, tmp_path):
    """2 rows of prompt_embeds beside 1 of pooled_prompt_embeds were broadcast (exit 0): prompt 2 ran with
    prompt 1's pooled embedding. Refused, naming both tensors and their rows; the negatives alike."""
    _, sd3, _ = saved
    bank = str(tmp_path / "bank.safetensors")
    save_file({"prompt_embeds": torch.zeros(2, 85, 16), "pooled_prompt_embeds": torch.zeros(1, 8)}, bank)
    argv = ["--pipeline", sd3, "--embeddings", bank, "--guidance", "1", "--height", "64", "--width", "64",
            "--out", str(tmp_path / "x.json"), *SEARCH]  # fmt: skip
    _pipeline_refusal(capsys, argv, "prompt_embeds has 2 row(s) but pooled_prompt_embeds has 1")
    assert not (tmp_path / "x.json").exists()
    pipe = pipelines.load_pipeline(sd3)
    cond = {"prompt_embeds": torch.zeros(2, 85, 16), "pooled_prompt_embeds": torch.zeros(2, 8),
            "negative_prompt_embeds": torch.zeros(2, 85, 16),
            "negative_pooled_prompt_embeds": torch.zeros(1, 8)}  # fmt: skip
    with pytest.raises(
        ValueError, match="negative_prompt_embeds has 2 row.* negative_pooled_prompt_embeds has 1"
    ):
        pipelines.pipeline_target(pipe, cond, 4.5, 64, 64)
    cond["negative_pooled_prompt_embeds"] = torch.zeros(2, 8)
    assert pipelines.pipeline_target(pipe, cond, 4.5, 64, 64).velocity.bank_size == 2  # paired: accepted
