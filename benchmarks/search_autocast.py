"""The schedule search with the model in bfloat16 (``SearchSettings(autocast=torch.bfloat16)``) vs float32.

For each model: two global searches for every K = 1..10 on ``uniform_grid(100)`` (defaults otherwise: Heun
teacher, full DP, seed 0), the model in float32 states both times, its calls once plain and once under
``torch.autocast("cpu", torch.bfloat16)``. Reported per K = 2..10: how many interior knots differ and the
largest move in grid points, and the pooled endpoint RMSE of each schedule's K-step Euler sampler on 1000
held-out noises (seed 1) against a converged dopri5 reference (rtol = atol = 1e-5), with the paired
bootstrap interval of the difference bf16 - float32 (``boss_fast.metrics.paired_bootstrap``, 1000
resamples, 95%). The held-out sampling runs the model as the demo does (``benchmarks.auto_samples._model``:
digits in float32, the mixtures in float64), whatever precision the search used.

The search runs the model in float32 (the mixtures loaded in float32: autocast leaves float64 tensors alone,
and the search refuses float64 states under autocast).

    PYTHONPATH=. python benchmarks/search_autocast.py --models digits_dit,gmm2d_narrow,five_gaussians

writes ``search_autocast.json`` and ``.md`` in ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

import boss_fast as bf
from benchmarks.auto_samples import _model
from boss_fast._validation import atomic_write
from boss_fast.metrics import bootstrap_weights, endpoint_rmse, paired_bootstrap, rmse_statistic

MAX_STEPS = 10
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}


def _search_model(name: str) -> torch.nn.Module:
    """The model the searches call: the evaluation model in float32."""
    return _model(name)[0].to(torch.float32)


def _squared_errors(model, noise, ref, times) -> np.ndarray:
    """(n,) per-noise mean squared error of the K-step Euler sampler at ``times`` against ``ref``."""
    with torch.no_grad():
        x = bf.sample(model, noise, times)
    return ((x - ref).reshape(len(x), -1).double() ** 2).mean(dim=1).numpy()


def _rows(name: str, args) -> dict:
    base, shape, dtype = _model(name)
    noise = bf.seeded_noise(shape, 0, args.eval_samples, seed=1, dtype=dtype)
    with torch.no_grad():
        ref = torch.cat([bf.reference_solution(base, c) for c in noise.split(250)])
    search_model, found, seconds = _search_model(name), {}, {}
    for label, autocast in PRECISIONS.items():
        settings = bf.SearchSettings(num_samples=args.num_samples[name], autocast=autocast)
        start = time.perf_counter()
        found[label] = bf.optimal_schedules(search_model, shape, MAX_STEPS, settings, dtype=torch.float32)
        seconds[label] = time.perf_counter() - start
        print(f"{name} {label}: {seconds[label]:.1f} s", flush=True)
    weights = bootstrap_weights(args.eval_samples, 1000, seed=0)
    per_k = {}
    for k in range(2, MAX_STEPS + 1):
        a, b = found["bfloat16"][k], found["float32"][k]
        moves = np.abs(a.indices - b.indices)
        sq = {label: _squared_errors(base, noise, ref, found[label][k].times) for label in PRECISIONS}
        diff = paired_bootstrap(sq["bfloat16"], sq["float32"], rmse_statistic, weights)
        per_k[str(k)] = {
            "knots_moved": int(np.count_nonzero(moves)),
            "largest_move": int(moves.max()),
            "rmse": {label: float(np.sqrt(sq[label].mean())) for label in PRECISIONS},
            "difference": [diff.estimate, diff.low, diff.high],
            "indices": {label: found[label][k].indices.tolist() for label in PRECISIONS},
        }
        with torch.no_grad():  # the same pooled RMSE as the demo's endpoint_rmse
            check = endpoint_rmse(bf.sample(base, noise, b.times), ref)
        assert abs(per_k[str(k)]["rmse"]["float32"] - check) < 1e-6 * max(1.0, check)
    return {"num_samples": args.num_samples[name], "search_seconds": seconds, "per_k": per_k}


def _markdown(setup: dict, results: dict, command: str) -> str:
    lines = [
        "# The search with the model in bfloat16 (autocast) beside float32: the schedules and their quality",
        "",
        f"Command: `{command}`",
        "",
        f"Setup: {json.dumps(setup)}",
        "",
        "Knots: interior knots of the bf16 search's K-step schedule that differ from the float32 search's "
        "(of K - 1), and the largest move in grid points. RMSE: pooled endpoint RMSE on the held-out noises; "
        "difference bf16 - float32 with its 95% paired-bootstrap interval.",
        "",
        "| model | noises | search s (fp32 / bf16) | K | knots moved | largest move | RMSE fp32 | "
        "RMSE bf16 | difference [95% interval] |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in results.items():
        secs = f"{row['search_seconds']['float32']:.0f} / {row['search_seconds']['bfloat16']:.0f}"
        for k, r in row["per_k"].items():
            d = r["difference"]
            lines.append(
                f"| {name} | {row['num_samples']} | {secs} | {k} | {r['knots_moved']} of {int(k) - 1} | "
                f"{r['largest_move']} | {r['rmse']['float32']:.4f} | {r['rmse']['bfloat16']:.4f} | "
                f"{d[0]:+.5f} [{d[1]:+.5f}, {d[2]:+.5f}] |"
            )
    lines += ["", "Per model (K = 2..10): interior knots moved in all, and the K where bf16's RMSE is worse "
              "or better than float32's with an interval excluding 0:", ""]  # fmt: skip
    for name, row in results.items():
        moved = sum(r["knots_moved"] for r in row["per_k"].values())
        total = sum(int(k) - 1 for k in row["per_k"])
        worse = [k for k, r in row["per_k"].items() if r["difference"][1] > 0]
        better = [k for k, r in row["per_k"].items() if r["difference"][2] < 0]
        lines.append(f"- {name}: {moved} of {total} knots moved; worse at K = {', '.join(worse) or 'none'}; "
                     f"better at K = {', '.join(better) or 'none'}")  # fmt: skip
    lines += ["", "Times: wall clock on the shared 2-core machine (other jobs running); bf16 matmuls on this "
              "CPU are slower than float32 (no native bf16): not a speed figure.", ""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits_dit,gmm2d_narrow,five_gaussians")
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--samples", default="digits_dit=128,gmm2d_narrow=256,five_gaussians=256")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    args.num_samples = {k: int(v) for k, v in (item.split("=") for item in args.samples.split(","))}
    torch.set_num_threads(args.threads)
    results = {name: _rows(name, args) for name in args.models.split(",")}
    setup = {"grid": 100, "max_steps": MAX_STEPS, "dp": "full", "solver": "heun", "search_seed": 0,
             "eval_samples": args.eval_samples, "eval_seed": 1, "reference": "dopri5 rtol=atol=1e-5",
             "machine": platform.machine(), "torch": torch.__version__}  # fmt: skip
    command = (f"PYTHONPATH=. python benchmarks/search_autocast.py --models {args.models} --samples "
               f"{args.samples} --eval-samples {args.eval_samples}")  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    doc = json.dumps({"setup": setup, "command": command, "results": results}, indent=1)
    atomic_write(os.path.join(args.out, "search_autocast.json"), lambda f: f.write(doc.encode()))
    text = _markdown(setup, results, command)
    atomic_write(os.path.join(args.out, "search_autocast.md"), lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
