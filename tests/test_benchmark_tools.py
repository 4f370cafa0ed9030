"""The benchmark tooling that turns pytest-benchmark JSON into the README's tables and issue 5's GPU verdict:
checked on synthetic runs, since its real input needs a GPU this suite may not have."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks.gpu.check_targets import report
from benchmarks.summarize import summarize

ENV = "device: NVIDIA H100 80GB HBM3\ntorch: 2.11.0 cuda: 12.8\ntriton: 3.6.0"


def bench(group: str, name: str, median: float, **extra) -> dict:
    return {"group": group, "name": name, "stats": {"median": median}, "extra_info": extra}


def gpu_run(
    graph_s: float, graph_floor_s: float, fused_s: float, fused_floor_s: float, compile_graph_s: float = 3e-3
) -> dict:
    group = "sampler digits_dit B=1 K=4"
    wide = "sampler latent_dit B=16 K=4"
    head = "fused head latent_dit B=64"
    return {
        "benchmarks": [
            bench(group, "test_baseline_eager[digits_dit-B1-K4]", 1e-3),
            bench(group, "test_cuda_graph[digits_dit-B1-K4-unfused]", graph_s, floor_s=graph_floor_s),
            bench(wide, "test_baseline_eager[latent_dit-B16-K4]", 9e-3),
            bench(wide, "test_cuda_graph[latent_dit-B16-K4-unfused]", 4e-3),
            bench(wide, "test_compile_graph[latent_dit-B16-K4]", compile_graph_s, compile_s=12.0),
            bench(head, "test_baseline_unfused_head", 60e-6),
            bench(head, "test_fused_head", fused_s, floor_s=fused_floor_s, bytes=123),
        ]
    }


def test_targets_met():
    text, ok = report(gpu_run(2.5e-4, 2.0e-4, 40e-6, 30e-6), ENV)
    assert ok and "MISS" not in text and text.count("PASS") == 5
    assert "1.33x the faster plain graph" in text  # compile_graph at batch 16 (issue 31)
    assert "4.0x eager" in text and "1.25x the kernels'" in text and "1.50x the unfused" in text
    assert "NVIDIA H100" in text  # the device and versions travel with the figures


def test_each_target_can_miss():
    cases = {
        "eager (>= 3x)": gpu_run(4e-4, 3.9e-4, 40e-6, 30e-6),  # 2.5x eager
        "kernels' ": gpu_run(2.5e-4, 1.0e-4, 40e-6, 30e-6),  # 2.5x its floor
        "unfused (>= 1.2x)": gpu_run(2.5e-4, 2.0e-4, 55e-6, 50e-6),  # 1.09x
        "bandwidth floor": gpu_run(2.5e-4, 2.0e-4, 40e-6, 20e-6),  # 2x the floor
        "faster plain graph": gpu_run(2.5e-4, 2.0e-4, 40e-6, 30e-6, compile_graph_s=5e-3),  # 0.8x the graph
    }
    for missed, run in cases.items():
        text, ok = report(run, ENV)
        assert not ok
        assert [line for line in text.splitlines() if line.startswith("| MISS")] == [
            line for line in text.splitlines() if line.startswith("| MISS") and missed in line
        ], missed


def test_no_gpu_figures_is_a_miss():
    run = {"benchmarks": [bench("sampler digits_dit B=1 K=1", "test_baseline_eager[x]", 1e-3)]}
    text, ok = report(run, "device: NO CUDA DEVICE")
    assert not ok and "no GPU figures" in text


def test_summarize_ratios_against_the_baseline(tmp_path):
    run = {
        "datetime": "2026-11-22T10:00:00",
        "machine_info": {"cpu": {"brand_raw": "Test CPU", "count": 2}, "python_version": "3.11"},
        "benchmarks": [
            bench("g", "test_baseline_eager[a]", 0.010),
            bench("g", "test_compile[a]", 0.004, floor_s=0.001),
            bench("h", "test_other", 2.5),
        ],
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    lines = summarize(str(path)).splitlines()
    assert "Test CPU (2 cores)" in lines[0]
    assert "| g | compile[a] | 4.000 ms | 2.50x | 1.000 ms |" in lines
    assert "| g | baseline_eager[a] | 10.000 ms |  |  |" in lines
    assert "| h | other | 2.50 s |  |  |" in lines  # no baseline in its group: no ratio


@pytest.mark.parametrize("seed", ["1", "-2"])
def test_search_budget_refuses_the_held_out_seed_before_any_search(seed):
    """--seed 1 would search on the noises the schedules are judged on: refused by name, nothing run."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    argv = ["benchmarks/search_budget.py", "--model", "gmm2d_narrow", "--seed", seed, "--out", "/nonexistent"]
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode != 0
    assert f"--seed {seed}: seed 1 draws the held-out noises" in out.stderr


@pytest.mark.parametrize(
    ("text", "match"),
    [("0,1", "seed 1 draws the held-out noises"), ("0,-3", "seed 1 draws"), ("0", "at least two distinct"),
     ("2,2", "at least two distinct"), ("0,x", "comma-separated integers")],
)  # fmt: skip
def test_search_seeds_refuses_bad_seeds(text, match):
    from benchmarks.search_seeds import parse_seeds

    assert parse_seeds("0, 2,3") == [0, 2, 3]
    with pytest.raises(SystemExit, match=match):
        parse_seeds(text)


def test_search_seeds_resumes_the_searches_it_saved(tmp_path, monkeypatch):
    """Each search is saved as it ends; a rerun with the same header searches only what is missing, and a
    header that differs (another model, other row settings) starts over."""
    import numpy as np

    import benchmarks.search_seeds as ss

    calls = []

    class Found(dict):
        pass

    def fake_search(model, shape, dtype, dp, m, polish, start, seed):
        calls.append((dp, m, seed))
        found = Found(
            {k: type("S", (), {"start": start, "times": np.linspace(0, 1, k + 1)})() for k in range(1, 11)}
        )
        return found, 100.0 + seed, 0.1

    monkeypatch.setattr(ss, "_search", fake_search)
    file = tmp_path / "p.json"
    path, header = str(file), {"model": "m", "rows": {"base": ["full", 256, "none", "noise"]}}
    done = ss.run_searches(None, (2,), None, ["base", "coarse+polish/64"], [0, 2], path, header)
    assert len(calls) == 4 and sorted(done) == [
        "base@0",
        "base@2",
        "coarse+polish/64@0",
        "coarse+polish/64@2",
    ]
    assert done["base@2"]["per_noise"] == 102.0 and done["base@2"]["times"][1] == [0.0, 0.5, 1.0]
    saved = json.loads(file.read_text())["done"]
    del saved["coarse+polish/64@2"]
    file.write_text(json.dumps({"header": header, "done": saved}))
    calls.clear()
    again = ss.run_searches(None, (2,), None, ["base", "coarse+polish/64"], [0, 2], path, header)
    assert calls == [("coarse", 64, 2)] and again == done
    calls.clear()
    ss.run_searches(None, (2,), None, ["base"], [0, 2], path, {**header, "model": "other"})
    assert len(calls) == 2


def test_search_seeds_report_marks_worse_and_better():
    from benchmarks.search_seeds import markdown

    k = [{"rmse": 0.1, "d_rmse": 0.0, "ci": [0.0, 0.0], "seeds_worse": 0}] * 10
    row = [{"rmse": 0.2, "d_rmse": 0.1, "ci": [0.05, 0.15], "seeds_worse": 3}]
    row += [{"rmse": 0.05, "d_rmse": -0.05, "ci": [-0.06, -0.01], "seeds_worse": 0}]
    row += [{"rmse": 0.1, "d_rmse": 0.0, "ci": [-0.01, 0.01], "seeds_worse": 1}] * 8
    judged = {"rows": {"base": {"per_noise": [1155.0, 1155.0], "k": k},
                       "coarse+polish/64": {"per_noise": [700.0, 800.0], "k": row}},
              "base_redrawn_worse": [0.5] * 10}  # fmt: skip
    md = markdown("m", "cmd", [0, 2], judged, {"machine": "x", "torch": "t"})
    assert "| coarse+polish/64 | coarse | 64 | start | 750.0 (700.0-800.0) | 48,000 | 0.162 | " in md
    assert "worse at K = 1; better at K = 2 |" in md
    assert "| 1 | 0.1000 | *0.2000* [+0.0500, +0.1500] worse |" in md
    assert "| 2 | 0.1000 | **0.0500** [-0.0600, -0.0100] |" in md
    assert "| 1 | 0.50 | 3 |" in md


def test_search_seeds_judge_pairs_each_seed_with_base():
    """On dx/dt = -x, from the noise at t = 0, K uniform Euler steps land closer to the exact endpoint the
    more steps they take: a row that takes one step where base takes K is worse at every K >= 2 in every
    seed, the same at K = 1, and base against itself is never worse."""
    import numpy as np
    import torch

    from benchmarks.search_budget import MAX_STEPS
    from benchmarks.search_seeds import judge
    from boss_fast.metrics import bootstrap_weights

    noise = torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = noise * math.exp(-1.0)
    uniform = [np.linspace(0.0, 1.0, k + 1).tolist() for k in range(1, MAX_STEPS + 1)]
    done = {}
    for seed in (0, 2):
        done[f"base@{seed}"] = {"start": "noise", "times": uniform, "per_noise": 1.0}
        done[f"coarse+polish/64@{seed}"] = {
            "start": "noise",
            "times": [uniform[0]] * MAX_STEPS,
            "per_noise": 1.0,
        }
    out = judge(
        lambda x, t: -x, noise, ref, done, ["base", "coarse+polish/64"], [0, 2], bootstrap_weights(200, 100)
    )
    worse = out["rows"]["coarse+polish/64"]["k"]
    assert worse[0]["d_rmse"] == 0.0 and worse[0]["seeds_worse"] == 0
    assert all(c["d_rmse"] > 0 and c["ci"][0] > 0 and c["seeds_worse"] == 2 for c in worse[1:])
    exact = (noise * 0.75**4 - ref).square().mean().sqrt().item()  # 4 steps of 1/4: x (1 - 1/4)^4
    assert out["rows"]["base"]["k"][3]["rmse"] == pytest.approx(exact)
    assert out["base_redrawn_worse"] == [0.0] * MAX_STEPS


def test_search_seeds_resumes_after_kill_9_and_is_deterministic(tmp_path):
    """Killed with SIGKILL after its first saved search, a rerun of the same command searches only what was
    not saved, and its report's schedules are those of an uninterrupted run (the searches are seeded)."""
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    seeds, rows = "0,2,3,4", "coarse+polish/64"

    def argv(out):
        report = str(tmp_path / "ref")
        return [sys.executable, "benchmarks/search_seeds.py", "--model", "five_gaussians", "--seeds", seeds,
                "--rows", rows, "--eval-samples", "50", "--out", str(out), "--report", report]  # fmt: skip

    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    partial = killed / "search_seeds_five_gaussians.partial.json"
    proc = subprocess.Popen(argv(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = json.loads(partial.read_text())["done"]
    assert 1 <= len(saved) < 8
    out = subprocess.run(argv(killed), capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    searched = [line.split(":")[0] for line in out.stdout.splitlines() if "evaluations per noise," in line]
    assert len(searched) == 8 - len(saved) and not set(searched) & set(saved)
    assert not partial.exists()
    done = subprocess.run(argv(fresh), capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    a = json.loads((killed / "search_seeds_five_gaussians.json").read_text())
    b = json.loads((fresh / "search_seeds_five_gaussians.json").read_text())
    assert a["schedules"] == b["schedules"] and a["judged"] == b["judged"]
