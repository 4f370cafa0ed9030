"""The command line, at small sizes (the demo itself: tests/test_demo.py).

User errors and Ctrl-C run the real command in a subprocess: exit code, ONE line on stderr, no traceback,
nothing left behind.
"""

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
from boss_fast import Schedule
from boss_fast.cli import main
from boss_fast.grids import uniform_grid
from boss_fast.models import load_bundled

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
    assert sched.steps == 3 and sched.times[0] == 0.0 and sched.times[-1] == 1.0
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
    "corrupt own-state checkpoint": (
        [*SCHEDULE, "--checkpoint", "{file}", "--out", "{tmp}/s.json"],
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
    assert doc == {"steps": 3, "sigmas": want, "times": sset[3].times.tolist()}
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
        (["set.json"], "holds a schedule set (K = 1..4): give --steps K"),
        (["set.json", "--steps", "7"], "--steps 7: set.json holds K = 1..4"),
        (["k3.json", "--steps", "4"], "--steps 4: k3.json is a 3-step schedule"),
        (["k3.json", "--format", "comfyui", "--shift", "3"], "apply to --format diffusers only"),
        (["k3.json", "--format", "diffusers", "--config", "karras.json"], "use_karras_sigmas=True"),
        (["k3.json", "--format", "diffusers", "--config", "stoch.json"], "stochastic_sampling=True"),
        (["k3.json", "--format", "diffusers", "--config", "dynamic.json"], "pass the pipeline's mu"),
        (
            ["k3.json", "--format", "diffusers", "--config", "nothere.json"],
            "--config nothere.json: no such file",
        ),
        (["other.json"], "neither a schedule nor a schedule set"),
        (["tampered.json", "--steps", "2"], "sha256 does not match"),
    ],
)
def test_sigmas_refuses_by_name(sigma_files, tmp_path, argv, message):
    root, _ = sigma_files
    for name in ("set.json", "k3.json"):
        (tmp_path / name).write_bytes((root / name).read_bytes())
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
    assert sset[3].num_samples == 64 and list(sset) == [1, 2, 3]  # 32 and 64 noises agree here
    with pytest.raises(SystemExit):
        main([*argv[:-1], "many", "--out", str(tmp_path / "x.json")])
    assert "expected an integer or 'auto'" in capsys.readouterr().err


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
