"""A sample budget that stops itself: ``num_samples="auto"`` beside today's fixed 128 and 256 noises.

For each model: global searches for every K = 1..10 on ``uniform_grid(100)`` (Heun teacher, seed 0, the
library's default DP and polish unless ``--dp``): "auto" (rounds of 32, 64, 128, ... noises up to the cap of
1024; after round j, stopping when round j - 2's schedules are, at 95%, at most 2% worse in RMSE (geometric
mean over K) than round j - 1's on the noises only round j used; see ``search._auto_global``) and fixed 128
and 256 noises. Model
evaluations counted exactly by a wrapper over every round. Judged on held-out noises (seed 1) by the endpoint
RMSE against a converged dopri5 reference (rtol = atol = 1e-5).

Models: the bundled digits DiT and ``gmm2d_narrow``, and ``five_gaussians``: an analytic 2-D mixture no test
uses (5 Gaussians of std 0.1 on a circle of radius 1.5, unequal weights 0.3, 0.25, 0.2, 0.15, 0.1).

    PYTHONPATH=. python benchmarks/auto_samples.py --models five_gaussians,gmm2d_narrow,digits_dit

writes ``auto_samples.json`` and ``.md`` in ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
import warnings

import torch

import boss_fast as bf
from benchmarks.quality_global import Counted
from boss_fast._validation import atomic_write
from boss_fast.demo import DEMO_MODELS
from boss_fast.metrics import endpoint_rmse
from boss_fast.models import GaussianMixtureFlow, load_bundled

MAX_STEPS = 10


def five_gaussians() -> GaussianMixtureFlow:
    angles = torch.arange(5, dtype=torch.float64) * (2.0 * math.pi / 5.0)
    means = 1.5 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    weights = torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1], dtype=torch.float64)
    return GaussianMixtureFlow(means, torch.full((5,), 0.1, dtype=torch.float64), weights)


def _model(name: str) -> tuple[torch.nn.Module, tuple[int, ...], torch.dtype]:
    if name == "five_gaussians":
        return five_gaussians(), (2,), torch.float64
    spec = DEMO_MODELS[name]
    return load_bundled(name, dtype=spec.dtype).eval(), spec.shape, spec.dtype


def _rows(name: str, args) -> dict:
    base, shape, dtype = _model(name)
    model = Counted(base)
    noise = bf.seeded_noise(shape, 0, args.eval_samples, seed=1, dtype=dtype)
    with torch.no_grad():
        ref = torch.cat([bf.reference_solution(base, c) for c in noise.split(250)])
    out = {}
    for label in ["auto", "128", "256"]:
        model.rows = 0
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = bf.optimal_schedules(
                model,
                shape,
                MAX_STEPS,
                bf.SearchSettings(grid=100, dp=args.dp, num_samples=label if label == "auto" else int(label)),
                dtype=dtype,
            )
        secs = time.perf_counter() - start
        used = found[1].num_samples
        with torch.no_grad():
            rmse = {k: endpoint_rmse(bf.sample(base, noise, s.times), ref) for k, s in found.items()}
        capped = any("before the schedules settled" in str(w.message) for w in caught)
        out[label] = {
            "noises_used": used,
            "evaluations": model.rows,
            "evaluations_per_noise_used": model.rows / used,
            "seconds": secs,
            "rmse": {str(k): r for k, r in rmse.items()},
            "indices": {str(k): s.indices.tolist() for k, s in found.items()},
            "cap_reached": capped,
        }
        print(f"{name} {label}: {used} noises, {model.rows} evaluations, {secs:.1f} s", flush=True)
    for row in out.values():
        row["rmse_vs_256"] = {k: row["rmse"][k] / out["256"]["rmse"][k] for k in row["rmse"]}
        row["worst_rmse_vs_256"] = max(row["rmse_vs_256"].values())
    return out


def _markdown(setup, results, command) -> str:
    lines = [
        '# num_samples="auto" beside fixed 128 and 256 noises (global DP, every K <= 10)',
        "",
        f"Command: `{command}`",
        "",
        f"Setup: {json.dumps(setup)}",
        "",
        "| model | noises | noises used | model evaluations (all rounds) | search s | worst RMSE vs 256 "
        "(K <= 10) | RMSE / 256-noise RMSE, K = 1..10 |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, rows in results.items():
        for label, row in rows.items():
            per_k = ", ".join(f"{row['rmse_vs_256'][str(k)]:.4f}" for k in range(1, MAX_STEPS + 1))
            cap = " (cap)" if row["cap_reached"] else ""
            lines.append(
                f"| {name} | {label} | {row['noises_used']}{cap} | {row['evaluations']:,} | "
                f"{row['seconds']:.1f} | {row['worst_rmse_vs_256']:.4f} | {per_k} |"
            )
    lines += ["", "Times: wall clock while other jobs shared the 2-core machine; they do not compare across "
              "models.", ""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="five_gaussians,gmm2d_narrow,digits_dit")
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--dp", default=None, help="full or coarse (default: the library's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="auto_samples")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {name: _rows(name, args) for name in args.models.split(",")}
    setup = {"grid": 100, "max_steps": MAX_STEPS, "dp": args.dp, "eval_samples": args.eval_samples,
             "eval_seed": 1, "search_seed": 0, "rule": "rounds 32, 64, ... <= 1024; after round j, stop when "
             "round j - 2's schedules are at most 2% worse than round j - 1's (geometric mean over K of the "
             "RMSE ratio, 95% paired interval) on the noises only round j used",
             "reference": "dopri5 rtol=atol=1e-5", "machine": platform.machine(),
             "torch": torch.__version__}  # fmt: skip
    dp = "" if args.dp is None else f" --dp {args.dp}"
    command = (f"PYTHONPATH=. python benchmarks/auto_samples.py --models {args.models} --eval-samples "
               f"{args.eval_samples}{dp} --tag {args.tag}")  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    doc = json.dumps({"setup": setup, "command": command, "results": results}, indent=1)
    atomic_write(os.path.join(args.out, f"{args.tag}.json"), lambda f: f.write(doc.encode()))
    text = _markdown(setup, results, command)
    atomic_write(os.path.join(args.out, f"{args.tag}.md"), lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
