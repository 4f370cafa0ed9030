"""Nothing silently wrong (command-line side): an exception inside the user's model, a non-finite or misshapen
sample, an extreme sigma shift, a foreign scheduler config, a size the machine cannot hold, a bad flag or an
empty output path each end in ONE stderr line, exit 2, no traceback (unless BOSS_FAST_DEBUG=1) and nothing
left behind. Each runs the real command in a subprocess (tests/test_cli.py's run_cli), or through main() in
this process where the refusal comes before any model is imported (IN_PROCESS)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_cli import assert_one_line_error, listing, run_cli

from boss_fast import Schedule, schedules_from_cost
from boss_fast.cli import main
from boss_fast.grids import uniform_grid

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
SCHEDULE = ["schedule", "--shape", "2", "--steps", "2", "--grid", "10", "--num-samples", "4", "--no-progress"]
SCHEDULE_AUTO = [*SCHEDULE[:-2], "auto", "--no-progress"]
SAMPLE = ["sample", "--shape", "2", "--schedule", "k3.json", "--num", "4", "--out", "x.npy"]

CASES = {
    # an exception inside the user's model, after the probe: the model and the call, in one line
    "schedule global, RuntimeError": (
        [*SCHEDULE, "--model", "models:raises_runtime", "--out", "s.json"],
        "--model models:raises_runtime raised RuntimeError at t = 0.0 on a batch of shape (4, 2): out of",
    ),
    "schedule local, KeyError": (
        [*SCHEDULE, "--objective", "local", "--model", "models:raises_key", "--out", "s.json"],
        "--model models:raises_key raised KeyError at t = 0.0 on a batch of shape (4, 2): 'missing'",
    ),
    "schedule local, IndexError in a module": (
        [*SCHEDULE, "--objective", "local", "--model", "models:indexes", "--out", "s.json"],
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
    "sample, RuntimeError": ([*SAMPLE, "--model", "models:raises_runtime"], "raised RuntimeError at t = 0.0"),
    # the sampler's checks: a NaN after the first step, a (B, 1) output broadcast into the state
    "sample, NaN later": (
        [*SAMPLE, "--model", "models:nan_later"],
        "non-finite values in step 1, from t = 0.4 to t = 1.0",
    ),
    "sample, narrows later": (
        [*SAMPLE, "--model", "models:narrows_later"],
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
    "schedule, empty out": ([*SCHEDULE, "--model", "gmm2d", "--out", ""], "--out: an empty path"),
}


# Refused before any model is loaded or any work starts: run in this process through main() (the same code
# path, without an interpreter start each): exit code, one stderr line, no exception, nothing written.
IN_PROCESS = {
    "sample, num 0": ([*SAMPLE[:-4], "--num", "0", "--out", "x.npy", "--model", "gmm2d"], "--num 0: must be"),
    # the search's settings, built in one place and refused naming the flag
    "schedule, max-samples without auto": (
        [*SCHEDULE, "--model", "gmm2d", "--max-samples", "64", "--out", "s.json"],
        "--max-samples: max_samples caps num_samples='auto', got num_samples=4",
    ),
    "schedule, max-samples below the first round": (
        [*SCHEDULE_AUTO, "--model", "gmm2d", "--max-samples", "8", "--out", "s.json"],
        "--max-samples: max_samples must be >= 32, got 8",
    ),
    "schedule, coarse dp of the local objective": (
        [*SCHEDULE, "--model", "gmm2d", "--dp", "coarse", "--objective", "local", "--out", "s.json"],
        "--dp: dp='coarse' is a route to objective='global'",
    ),
    "schedule, a backend of the global objective": (
        [*SCHEDULE, "--model", "gmm2d", "--backend", "numpy", "--out", "s.json"],
        "--backend: backend selects the Bellman DP's kernel of objective='local'",
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


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_refusal_is_one_line_exit_2_and_leaves_nothing(tmp_path, case):
    argv, fragment = CASES[case]
    _folder(tmp_path)
    before = listing(tmp_path)
    proc = run_cli(argv, cwd=tmp_path)
    assert_one_line_error(proc, fragment)
    assert [p for p in listing(tmp_path) if not p.startswith("__pycache__")] == before


def test_boss_fast_debug_shows_the_traceback(tmp_path, monkeypatch):
    _folder(tmp_path)
    monkeypatch.setenv("BOSS_FAST_DEBUG", "1")
    proc = run_cli([*SAMPLE, "--model", "models:raises_runtime"], cwd=tmp_path)
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
