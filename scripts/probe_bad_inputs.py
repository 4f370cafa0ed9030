"""Run the bad-input probes of "nothing silently wrong", rounds two and three, and print one line per probe.

    PYTHONPATH=. python scripts/probe_bad_inputs.py

Library probes print the exception each raises (a probe that returns is flagged RETURNED: silently wrong
unless the line says it is the documented limit). CLI probes run ``python -m boss_fast.cli`` in a scratch
folder and print the exit code, the number of stderr lines, whether a traceback appeared and which files the
command left behind. The last line counts the probes that misbehaved; the exit code is 1 if any did.

Round three's API and CLI inputs (its own section below) sort each misbehaving probe as silently wrong (a
result, exit 0), a traceback, or unclear (accepted and failing later, or an error that does not name the
input and what is accepted), and print the three counts.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import boss_fast as bf
from boss_fast._identity import content_digest
from boss_fast.schedule import interpolate_schedule
from boss_fast.straighten import PairTeacher, pair_grid

TIMES = [0.0, 0.2, 0.5, 0.8, 1.0]
MODELS = """
import torch
calls = {"n": 0}
def _later(bad):
    def velocity(x, t):
        calls["n"] += 1
        return -x if calls["n"] <= 1 else bad(x)
    return velocity
raises_runtime = _later(lambda x: (_ for _ in ()).throw(RuntimeError("boom")))
raises_key = _later(lambda x: {}["missing"])
raises_index = _later(lambda x: x[:, [99]])
def nan_later(x, t):
    return torch.where(t[:, None] > 0.3, torch.full_like(x, float("nan")), -x)
def narrows_later(x, t):
    return -x if float(t[0]) < 0.3 else -x[:, :1]
"""


def _later(bad: Callable) -> Callable:
    state = {"n": 0}

    def velocity(x: torch.Tensor, t: torch.Tensor) -> object:
        state["n"] += 1
        return -x if state["n"] <= 1 else bad(x)

    return velocity


def _library_probes() -> dict[str, Callable[[], object]]:
    z, o = torch.zeros(2), torch.ones(2)
    probes = {
        f"Sampler {mode}: {name} at a later step": (
            lambda m=mode, b=bad: bf.Sampler(_later(b), TIMES, mode=m)(torch.randn(4, 3))
        )
        for mode in ("eager", "compile")
        for name, bad in {
            "(B, 1)": lambda x: -x[:, :1],
            "NaN": lambda x: x * math.nan,
            "float64": lambda x: (-x).double(),
            "float16": lambda x: (-x).half(),
            "int64": lambda x: (-x).long(),
            "None": lambda x: None,
            "ndarray": lambda x: (-x).numpy(),
            "meta tensor": lambda x: torch.empty_like(x, device="meta"),
            "wrong batch": lambda x: -x[:1],
        }.items()
    }
    probes.update(
        {
            "cfg_combine tensor([2, 3])": lambda: bf.ode.cfg_combine(z, o, torch.tensor([2.0, 3.0])),
            "cfg_combine True": lambda: bf.ode.cfg_combine(z, o, True),
            "cfg_combine NaN": lambda: bf.ode.cfg_combine(z, o, math.nan),
            "cfg_combine inf": lambda: bf.ode.cfg_combine(z, o, math.inf),
            "interpolate_schedule(list, 4)": lambda: interpolate_schedule([0.0, 0.5, 1.0], 4),
            'optimal_schedules(dtype="float64")': lambda: bf.optimal_schedules(
                lambda x, t: -x, (2,), 2, bf.SearchSettings(grid=10, num_samples=4), dtype="float64"
            ),
            "cost_matrix(noise (4, 0))": lambda: bf.cost_matrix(
                lambda x, t: -x, torch.randn(4, 0), [0.0, 0.5, 1.0], progress=False
            ),
            "ScheduleSet: edited table, budgets kept optimal (documented limit)": _edited_set,
        }
    )
    return probes


def _edited_set() -> object:
    n = 21
    i = np.arange(n, dtype=np.float64)
    weight = 1.0 + 0.3 * np.sin(i)
    cost = np.triu(np.square(np.subtract.outer(i, i)) * np.add.outer(weight, weight), 1)
    sset = bf.schedules_from_cost(cost, 5, grid=np.linspace(0, 1, n))
    six = sset.resample(6).indices
    used = {(a, b) for s in sset.values() for a, b in zip(s.indices[:-1], s.indices[1:], strict=True)}
    edge = next((a, b) for a, b in zip(six[:-1], six[1:], strict=True) if (a, b) not in used)
    k = int(np.flatnonzero((np.triu_indices(n, 1)[0] == edge[0]) & (np.triu_indices(n, 1)[1] == edge[1]))[0])
    doc = sset.to_dict()
    doc["cost_table_upper"][k] *= 1000
    doc["sha256"] = content_digest(doc)
    edited = bf.ScheduleSet.from_dict(doc, "edited.json").resample(6).indices.tolist()
    return f"loads; resample(6) {six.tolist()} -> {edited}"


# ----------------------------------------------- round three: checkpoints that check themselves, straighten


def _edited_checkpoint(objective: str, edit: Callable[[dict], None], keep_checksum: bool = True) -> object:
    """A finished search checkpoint of ``objective`` edited by ``edit`` (its ``payload_sha256`` dropped unless
    ``keep_checksum``: a file as the code before the checksum wrote it), then the same search rerun on it."""
    settings = bf.SearchSettings(grid=12, num_samples=9, batch_size=4, objective=objective)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ckpt.npz")

        def search() -> object:
            return bf.optimal_schedules(
                lambda x, t: torch.sin(3 * x), (3,), 4, settings, dtype=torch.float64, checkpoint=path,
                checkpoint_key="wavy", progress=False,
            )  # fmt: skip

        search()
        with np.load(path) as data:
            stored = {key: data[key].copy() for key in data.files}
        edit(stored)
        if not keep_checksum:
            stored.pop("payload_sha256", None)
        np.savez(path, **stored)
        return search()


def _moved_pointer(stored: dict) -> None:
    stored["pointers"][2, -1] = 1 if stored["pointers"][2, -1] != 1 else 2


def _straighten_past_iters() -> object:
    """A finished 30-step run in checkpoint_dir, then the same run asked for 10 steps."""
    grid = np.linspace(0.0, 1.0, 11)
    sched = bf.Schedule(times=grid[[0, 4, 10]], indices=np.array([0, 4, 10]), cost=0.0, grid=grid)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))

    class Velocity(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.net(torch.cat([x, t[:, None]], dim=1))

    with tempfile.TemporaryDirectory() as tmp:
        run = {"shape": (2,), "progress": False, "checkpoint_dir": tmp, "return_stats": True}
        common = {"num_pairs": 8, "grid": 10, "batch_size": 4}
        bf.straighten(Velocity(), sched, settings=bf.StraightenSettings(iters=30, **common), **run)
        _, stats = bf.straighten(Velocity(), sched, settings=bf.StraightenSettings(iters=10, **common), **run)
        return f"stats.steps = {stats.steps}"


def _killed_disk_store(root: Path) -> tuple[bool, str]:
    """``schedule --store disk --checkpoint X`` killed (SIGKILL) once X exists, then rerun: the rows folder
    the killed run left must be gone after the rerun."""
    argv = [sys.executable, "-m", "boss_fast.cli", "schedule", "--model", "gmm2d", "--max-steps", "6",
            "--grid", "400", "--num-samples", "256", "--store", "disk", "--checkpoint", "ck.npz",
            "--no-progress", "--out", "killed.json"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(bf.__file__).parents[1])}
    proc = subprocess.Popen(argv, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (root / "ck.npz").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None:
        return False, "inconclusive: the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = sorted(p.name for p in root.iterdir() if p.name.startswith("boss_fast_rows_"))
    rerun = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True)
    left = sorted(p.name for p in root.iterdir() if p.name.startswith("boss_fast_rows_"))
    ok = rerun.returncode == 0 and not left
    return ok, f"killed run left {killed}; rerun exit {rerun.returncode}, left {left}"


def _checkpoint_probes() -> dict[str, Callable[[], object]]:
    """Round three's probes of the search checkpoints and straightening's resume (each must raise)."""

    def scale(name: str) -> Callable[[dict], None]:
        return lambda s: s.update({name: s[name] * 2})

    return {
        "local checkpoint, sums x2": lambda: _edited_checkpoint("local", scale("sums")),
        "global checkpoint, costs x2": lambda: _edited_checkpoint("global", scale("costs")),
        "global checkpoint, one pointer moved": lambda: _edited_checkpoint("global", _moved_pointer),
        "global checkpoint (no checksum), float32 costs": lambda: _edited_checkpoint(
            "global", lambda s: s.update(costs=s["costs"].astype(np.float32)), keep_checksum=False
        ),
        "global checkpoint (no checksum), no costs": lambda: _edited_checkpoint(
            "global", lambda s: s.pop("costs"), keep_checksum=False
        ),
        "straighten iters=10 on a finished 30-step checkpoint": _straighten_past_iters,
    }


def _cli_probes() -> dict[str, list[str]]:
    schedule = [
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
    sample = ["sample", "--shape", "2", "--schedule", "k3.json", "--num", "4", "--out", "x.npy"]
    diffusers = ["sigmas", "k3.json", "--format", "diffusers"]
    probes = {
        f"schedule {objective}, model raises {kind}": [
            *schedule,
            "--objective",
            objective,
            "--model",
            f"models:raises_{kind}",
            "--out",
            "s.json",
        ]
        for objective in ("global", "local")
        for kind in ("runtime", "key", "index")
    }
    probes.update(
        {
            f"sample, model raises {kind}": [*sample, "--model", f"models:raises_{kind}"]
            for kind in ("runtime", "key", "index")
        }
    )
    probes.update(
        {
            "sample, NaN after the first step": [*sample, "--model", "models:nan_later"],
            "sample --mode compile, NaN after the first step": [
                *sample,
                "--mode",
                "compile",
                "--model",
                "models:nan_later",
            ],
            "sample, (B, 1) after t = 0.3": [*sample, "--model", "models:narrows_later"],
            "sigmas --shift 1e308": [*diffusers, "--shift", "1e308"],
            "sigmas --shift 1e-320": [*diffusers, "--shift", "1e-320"],
            "sigmas linear --mu 1e-320": [*diffusers, "--config", "linear.json", "--mu", "1e-320"],
            "sigmas --mu 709": [*diffusers, "--mu", "709"],
            "sigmas --mu 710": [*diffusers, "--mu", "710"],
            "sigmas --mu 1e308": [*diffusers, "--mu", "1e308"],
            "sigmas linear --mu 1e308": [*diffusers, "--config", "linear.json", "--mu", "1e308"],
            "sigmas --mu -800": [*diffusers, "--mu", "-800"],
            "sigmas --config EulerDiscreteScheduler": [*diffusers, "--config", "euler.json"],
            'sigmas --config {"shift": null}': [*diffusers, "--config", "null.json"],
            "sigmas set with 1e999 in its grid": ["sigmas", "huge.json", "--steps", "2"],
            "dp-example --grid 100000 --max-steps 2": ["dp-example", "--grid", "100000", "--max-steps", "2"],
            "demo --eval-samples 0": ["demo", "--eval-samples", "0", "--out", "report"],
            'schedule --out ""': [*schedule, "--model", "gmm2d", "--out", ""],
        }
    )
    return probes


def _folder(root: Path) -> None:
    (root / "models.py").write_text(MODELS)
    grid = np.linspace(0.0, 1.0, 11)
    idx = np.array([0, 4, 10])
    bf.Schedule(times=grid[idx], indices=idx, cost=0.0, grid=grid).save(root / "k3.json")
    cost = np.triu(np.square(np.subtract.outer(np.arange(11.0), np.arange(11.0))), 1)
    bf.schedules_from_cost(cost, 3, grid=grid).save(root / "set.json")
    doc = json.loads((root / "set.json").read_text())
    (root / "huge.json").write_text(json.dumps(doc).replace(json.dumps(doc["grid"][1]), "1e999", 1))
    (root / "euler.json").write_text(json.dumps({"_class_name": "EulerDiscreteScheduler", "shift": 3.0}))
    (root / "null.json").write_text(json.dumps({"shift": None}))
    linear = {"use_dynamic_shifting": True, "time_shift_type": "linear"}
    (root / "linear.json").write_text(
        json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler", **linear})
    )


def _run_cli(argv: list[str], root: Path) -> tuple[bool, str]:
    before = {p for p in root.rglob("*") if "__pycache__" not in p.parts}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(bf.__file__).parents[1]), str(root)])}
    proc = subprocess.run(
        [sys.executable, "-m", "boss_fast.cli", *argv], cwd=root, env=env, capture_output=True, text=True
    )
    left = sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if "__pycache__" not in p.parts and p not in before
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    traceback = "Traceback" in proc.stderr
    ok = proc.returncode == 2 and len(lines) == 1 and not traceback and not left
    last = lines[-1] if lines else proc.stdout.strip()[:120]
    return (
        ok,
        f"exit {proc.returncode}, {len(lines)} stderr line(s), traceback {traceback}, left {left}: {last}",
    )


# -- round three: the ComfyUI node's get_sigmas inputs and its schedule file ---------------------------------
# As an API caller or a linked node could pass them (ComfyUI's own widget checks convert "3" and refuse None
# first); each must be refused naming the input and what it accepts.


def _comfyui_node_probes(root: Path) -> dict[str, tuple[Callable[[], object], str]]:
    """Each probe with the words its refusal must hold (the input's name and what it accepts): a Python
    comparison error (today's ``'<' not supported``) does not count as a refusal."""
    from boss_fast.comfyui import BossSchedule

    def node(schedule_file: str, steps: object = 0, denoise: object = 1.0) -> Callable[[], object]:
        return lambda: BossSchedule().get_sigmas(schedule_file, steps, denoise)

    set_file, k3 = str(root / "set.json"), str(root / "k3.json")  # a 3-budget set on 11 points; 2 steps
    steps, denoise = "steps must be an integer: 0 for", "denoise must be a number in [0, 1]"
    probes = {
        f"ComfyUI get_sigmas steps {v!r}": (node(set_file, steps=v), steps)
        for v in ("3", None, 2.0, True, -1)
    }
    probes.update(
        {
            f"ComfyUI get_sigmas denoise {v!r}": (node(set_file, denoise=v), denoise)
            for v in (math.nan, "0.5", None, 1.5)
        }
    )
    probes.update(
        {
            "ComfyUI get_sigmas steps 11 on an 11-point set": (node(set_file, steps=11), "gives K = 1..10"),
            "ComfyUI get_sigmas steps 5 on a 2-step schedule": (node(k3, steps=5), "is a 2-step schedule"),
            "ComfyUI get_sigmas relative name outside ComfyUI": (node("set.json"), "not running inside"),
            'ComfyUI get_sigmas schedule_file ""': (node(""), "schedule_file must name a schedule JSON"),
        }
    )
    return probes


# ------------------------------------------------------------- round three: API and CLI inputs (issue 30)
# Each probe: (what it counts as when it misbehaves, fragments its error must hold, the call). A probe
# behaves when the call raises a ValueError or TypeError holding every fragment (the input's name and what
# is accepted); returning, another exception or a message without them is the probe's category.
ROUND3 = ("silently wrong", "traceback", "unclear")


def _round3_api_probes(root: Path) -> dict[str, tuple[str, tuple[str, ...], Callable[[], object]]]:
    flow = lambda x, t: -x  # noqa: E731
    (root / "afile").write_text("x")
    small = {"grid": 10, "num_samples": 4}
    probes = {
        "Sampler(plain model, guidance=2.0)": (
            "silently wrong",
            ("guidance", "cfg_pair"),
            lambda: bf.Sampler(flow, TIMES, mode="eager", guidance=2.0)(torch.randn(4, 3)),
        ),
        "SearchSettings(grid=10**12)": (
            "unclear",
            ("grid", "100000"),
            lambda: bf.SearchSettings(grid=10**12),
        ),
        "optimal_schedules(flow, 2, 2)": (
            "unclear",
            ("shape", "(2,)"),
            lambda: bf.optimal_schedules(flow, 2, 2, bf.SearchSettings(**small)),
        ),
        'StraightenSettings(lora_targets="(")': (
            "unclear",
            ("lora_targets", "regular expression"),
            lambda: bf.StraightenSettings(lora_targets="("),
        ),
        "StraightenSettings(seed=2**70)": (
            "unclear",
            ("seed", "2^64"),
            lambda: bf.StraightenSettings(seed=2**70),
        ),
        "StraightenSettings(pair_steps=None, pair_spacing='adaptive')": (
            "unclear",
            ("pair_spacing", "pair_steps"),
            lambda: bf.StraightenSettings(pair_steps=None, pair_spacing="adaptive"),
        ),
        "StraightenSettings(inputs='student')": (
            "unclear",
            ("inputs", "student", "sampler"),
            lambda: bf.StraightenSettings(inputs="student"),
        ),
        "PairTeacher(steps=6, spacing='even')": (
            "unclear",
            ("pair_spacing", "even"),
            lambda: PairTeacher(steps=6, spacing="even"),
        ),
        "pair_grid(density of the wrong length)": (
            "unclear",
            ("density", "10"),
            lambda: pair_grid(
                bf.Schedule(bf.uniform_grid(10)[[0, 5, 10]], np.array([0, 5, 10]), 0.0, bf.uniform_grid(10)),
                4,
                density=np.ones(3),
            ),  # fmt: skip
        ),
        "cfg_pair(1, flow)": ("unclear", ("v_cond", "callable"), lambda: bf.cfg_pair(1, flow)),
        "cfg_combine(batch 4, batch 3)": (
            "unclear",
            ("v_uncond", "(4, 2)", "(3, 2)"),
            lambda: bf.ode.cfg_combine(torch.zeros(4, 2), torch.ones(3, 2), 2.0),
        ),
    }
    for case, folder in {
        "missing": root / "missing",
        "a file": root / "afile",
        "unwritable": "/proc",
    }.items():
        probes[f'optimal_schedules(store="disk", store_dir={case})'] = (
            "unclear",
            ("store_dir",),
            lambda d=folder: bf.optimal_schedules(
                flow, (2,), 2, bf.SearchSettings(**small, store="disk", store_dir=d)
            ),
        )
    if importlib.util.find_spec("diffusers") is not None:
        probes['BossScheduler: scheduler_config.json with searched_shape "abc"'] = (
            "unclear",
            ("searched_shape",),
            lambda: _scheduler_with_shape(root / "scheduler", "abc"),
        )
    return probes


def _scheduler_with_shape(folder: Path, shape: object) -> object:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from boss_fast.integrations.diffusers import BossScheduler

    grid = np.linspace(0.0, 1.0, 5)
    sched = bf.Schedule(times=grid, indices=np.arange(5), cost=0.0, grid=grid, shape=(4, 8, 8))
    BossScheduler.from_schedule(sched, FlowMatchEulerDiscreteScheduler().config).save_pretrained(folder)
    path = folder / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "searched_shape": shape}))
    return BossScheduler.from_pretrained(folder)


def _round3_cli_probes(root: Path) -> dict[str, tuple[str, tuple[str, ...], list[str]]]:
    """``schedule --pipeline`` on tiny random SD3 and Flux pipelines (tests/_tiny_pipelines.py, no
    downloads), with the bad file or flag of each probe."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from _tiny_pipelines import save_tiny_flux, save_tiny_sd3
    from safetensors.torch import save_file

    sd3, flux = save_tiny_sd3(str(root)), save_tiny_flux(str(root))
    (root / "empty").mkdir()
    (root / "empty" / "model_index.json").write_text("{}")
    (root / "prompts.txt").write_text("a red cat\nthe sea\n")
    (root / "binary.txt").write_bytes(b"a red cat\n\xff\xfe\x85\n")
    save_file(
        {"prompt_embeds": torch.zeros(2, 85, 16), "pooled_prompt_embeds": torch.zeros(1, 8)},
        str(root / "rows.safetensors"),
    )
    save_file(
        {"prompt_embeds": torch.zeros(2, 85, 16), "pooled_prompt_embeds": torch.zeros(2, 8)},
        str(root / "good.safetensors"),
    )
    whole = (root / "good.safetensors").read_bytes()
    (root / "cut.safetensors").write_bytes(whole[: len(whole) // 2])
    (root / "text.safetensors").write_text("not safetensors\n")
    tail = ["--out", "p.json", "--steps", "2", "--grid", "4", "--num-samples", "2", "--no-progress"]
    prompts = ["--prompts", "prompts.txt", "--max-sequence-length", "8"]
    size = ["--height", "64", "--width", "64"]
    return {
        "schedule --pipeline DIR with model_index.json {}": (
            "traceback",
            ("model_index.json", "_class_name"),
            ["--pipeline", "empty", *prompts, *tail],
        ),
        "schedule --pipeline sd3 --embeddings truncated": (
            "traceback",
            ("--embeddings", "safetensors"),
            ["--pipeline", sd3, "--embeddings", "cut.safetensors", "--guidance", "1", *tail],
        ),
        "schedule --pipeline sd3 --embeddings not safetensors": (
            "traceback",
            ("--embeddings", "safetensors"),
            ["--pipeline", sd3, "--embeddings", "text.safetensors", "--guidance", "1", *tail],
        ),
        "schedule --pipeline sd3 --embeddings 2 rows, pooled 1": (
            "silently wrong",
            ("prompt_embeds", "pooled_prompt_embeds", "2", "1"),
            ["--pipeline", sd3, "--embeddings", "rows.safetensors", "--guidance", "1", *size, *tail],
        ),
        "schedule --pipeline flux --guidance 1e308": (
            "traceback",
            ("--guidance", "[0, 1000]"),
            ["--pipeline", flux, *prompts, "--guidance", "1e308", *tail],
        ),
        "schedule --pipeline sd3 --guidance 1e308": (
            "unclear",
            ("--guidance", "[0, 1000]"),
            ["--pipeline", sd3, *prompts, "--guidance", "1e308", *size, *tail],
        ),
        "schedule --pipeline sd3 --height 8 --width 64": (
            "traceback",
            ("--height", "16"),
            ["--pipeline", sd3, *prompts, "--guidance", "1", "--height", "8", "--width", "64", *tail],
        ),
        "schedule --pipeline sd3 --prompts binary.txt": (
            "unclear",
            ("--prompts", "binary.txt"),
            ["--pipeline", sd3, "--prompts", "binary.txt", *tail],
        ),
    }


def _round3_cli(argv: list[str], root: Path, fragments: tuple[str, ...]) -> tuple[str | None, str]:
    """(None if it behaved else "traceback" or "unclear", the line to print). diffusers' loading bars and
    transformers' notices on stderr are theirs: only boss-fast's own lines are counted."""
    before = set(root.rglob("*"))
    env = {**os.environ, "PYTHONPATH": str(Path(bf.__file__).parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "boss_fast.cli", "schedule", *argv],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    ours = [line for line in proc.stderr.splitlines() if line.startswith("boss-fast ")]
    left = sorted(
        str(p.relative_to(root)) for p in set(root.rglob("*")) - before if "__pycache__" not in p.parts
    )
    last = ours[-1] if ours else (proc.stderr.strip().splitlines() or [""])[-1]
    line = f"exit {proc.returncode}, traceback {'Traceback' in proc.stderr}, left {left}: {last[:200]}"
    if "Traceback" in proc.stderr:
        return "traceback", line
    ok = proc.returncode == 2 and len(ours) == 1 and not left and all(f in ours[0] for f in fragments)
    return (None if ok else "unclear"), line


def round_three() -> int:
    """Run round three's probes; print one line each and the three counts; return how many misbehaved."""
    counts = dict.fromkeys(ROUND3, 0)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (category, fragments, probe) in _round3_api_probes(Path(tmp)).items():
            try:
                result = probe()
            except (ValueError, TypeError) as err:
                text = str(err).splitlines()[0]
                ok = all(f in text for f in fragments)
                counts[category] += not ok
                print(f"[{'ok ' if ok else 'BAD'}] {name}: {type(err).__name__}: {text[:200]}")
                continue
            except Exception as err:  # another type: a late failure, not a refusal
                counts[category] += 1
                print(f"[BAD] {name}: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
                continue
            counts[category] += 1
            print(f"[BAD] {name}: RETURNED {str(result)[:160]}")
    if importlib.util.find_spec("diffusers") is None:
        print(
            "round three: the --pipeline probes need diffusers (pip install 'boss_fast[diffusers]'): skipped"
        )
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for name, (category, fragments, argv) in _round3_cli_probes(Path(tmp)).items():
                found, line = _round3_cli(argv, Path(tmp), fragments)
                if found is not None:
                    counts["traceback" if found == "traceback" else category] += 1
                print(f"[{'ok ' if found is None else 'BAD'}] boss-fast {name}: {line}")
    print("round three: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return sum(counts.values())


def main() -> int:
    bad = 0
    for name, probe in {**_library_probes(), **_checkpoint_probes()}.items():
        try:
            result = probe()
        except Exception as err:  # the expected outcome: a named error
            print(f"[ok ] {name}: {type(err).__name__}: {str(err).splitlines()[0][:160]}")
            continue
        documented = "documented limit" in name
        bad += not documented
        print(f"[{'doc' if documented else 'BAD'}] {name}: RETURNED {str(result)[:160]}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _folder(root)
        for name, argv in _cli_probes().items():
            ok, line = _run_cli(argv, root)
            bad += not ok
            print(f"[{'ok ' if ok else 'BAD'}] boss-fast {name}: {line}")
        for name, (probe, words) in _comfyui_node_probes(root).items():  # round three: the ComfyUI node
            try:
                result = f"RETURNED {str(probe())[:160]}"
            except Exception as err:
                result = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            ok = words in result and not result.startswith("RETURNED")
            bad += not ok
            print(f"[{'ok ' if ok else 'BAD'}] {name}: {result}")
    with tempfile.TemporaryDirectory() as tmp:
        ok, line = _killed_disk_store(Path(tmp))
        bad += not ok
        print(
            f"[{'ok ' if ok else 'BAD'}] boss-fast schedule --store disk --checkpoint, SIGKILL, rerun: {line}"
        )
    bad += round_three()
    print(f"{bad} probe(s) misbehaved")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
