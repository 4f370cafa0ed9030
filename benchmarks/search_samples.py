"""How many noises a schedule search needs: schedules searched on n noises, judged on other noises.

For each bundled model, objective, search size n and search seed, one search for every budget K = 1..10
(grid ``uniform_grid(100)``, each objective's default teacher), judged on 1000 held-out noises (seed 1, never
a search seed) by the endpoint RMSE against a converged dopri5 reference (rtol = atol = 1e-5), paired with
uniform steps on the same noises. Per (model, objective, n) it reports, over the seeds: the geometric mean
over K = 2..10 of RMSE / uniform (mean and range over seeds), the worst single K, and how many (K, seed) pairs
lose to uniform. The spread over seeds at one n is how much the answer depends on which noises the search
saw.

    PYTHONPATH=. python benchmarks/search_samples.py --models digits_dit --sizes 128,256 --threads 1
    PYTHONPATH=. python benchmarks/search_samples.py --models gmm2d_narrow --sizes 64,128,256,512 --threads 1

write ``search_samples_{models}.json`` and ``.md`` in ``--out`` (default benchmarks/results; the models joined
by "_"). The digits rows take most of the time (about an hour on this shared 2-core CPU; the mixture's a
few minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch

import boss_fast as bf
from boss_fast._validation import atomic_write
from boss_fast.demo import DEMO_MODELS, cached_reference
from boss_fast.models import load_bundled

MAX_STEPS = 10


def _rmse_per_k(model, noise, ref, schedules) -> dict[int, float]:
    out = {}
    for k, times in schedules.items():
        x = bf.Sampler(model, times, mode="eager", batch_size=len(noise), dtype=noise.dtype)(noise)
        out[k] = float((x.double() - ref.double()).square().mean().sqrt())
    return out


def _summary(ratios: list[dict[int, float]]) -> dict:
    """ratios: one {K: rmse / uniform} per seed -> geomean over K = 2..10 per seed, worst K, losses."""
    geo = [math.exp(np.mean([math.log(r[k]) for k in r if k >= 2])) for r in ratios]
    return {
        "geomean_per_seed": geo,
        "geomean_mean": float(np.mean(geo)),
        "geomean_min": float(min(geo)),
        "geomean_max": float(max(geo)),
        "worst_k_ratio": float(max(r[k] for r in ratios for k in r if k >= 2)),
        "losses": int(sum(r[k] > 1.0 for r in ratios for k in r if k >= 2)),
        "cases": int(sum(1 for r in ratios for k in r if k >= 2)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--models", default="digits_dit,gmm2d_narrow")
    parser.add_argument("--objectives", default="global,local")
    parser.add_argument("--sizes", default=None, help="comma list; default per model")
    parser.add_argument("--seeds", default="100,200,300")
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--cache", default="/tmp/boss_fast_search_samples", help="dopri5 reference cache")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    default_sizes = {"digits_dit": "64,128,256,512", "gmm2d_narrow": "64,128,256,512,1024,4096"}
    seeds = [int(s) for s in args.seeds.split(",")]
    os.makedirs(args.cache, exist_ok=True)
    doc: dict = {
        "setup": {
            "grid": 100,
            "max_steps": MAX_STEPS,
            "eval_samples": args.eval_samples,
            "eval_seed": 1,
            "search_seeds": seeds,
            "reference": "dopri5 rtol=atol=1e-5",
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },
        "rows": [],
    }
    for name in args.models.split(","):
        spec = DEMO_MODELS[name]
        model = load_bundled(name)
        noise = bf.seeded_noise(spec.shape, 0, args.eval_samples, seed=1, dtype=spec.dtype)
        ref, _ = cached_reference(
            model, noise, os.path.join(args.cache, f"reference_{name}.safetensors"),
            fingerprint=bf.model_fingerprint(model),
        )  # fmt: skip
        uniform = _rmse_per_k(model, noise, ref, {k: bf.uniform_grid(k) for k in range(1, MAX_STEPS + 1)})
        sizes = [int(s) for s in (args.sizes or default_sizes[name]).split(",")]
        for objective in args.objectives.split(","):
            for n in sizes:
                ratios, seconds = [], []
                for seed in seeds:
                    start = time.perf_counter()
                    found = bf.optimal_schedules(
                        model,
                        spec.shape,
                        MAX_STEPS,
                        bf.SearchSettings(
                            objective=objective, grid=100, num_samples=n, batch_size=min(n, 512), seed=seed
                        ),
                        dtype=spec.dtype,
                        progress=False,
                    )
                    seconds.append(time.perf_counter() - start)
                    rmse = _rmse_per_k(model, noise, ref, {k: s.times for k, s in found.items()})
                    ratios.append({k: rmse[k] / uniform[k] for k in rmse})
                row = {"model": name, "objective": objective, "num_samples": n, "search_seconds": seconds}
                row |= _summary(ratios)
                row["ratio_per_k"] = [{str(k): v for k, v in r.items()} for r in ratios]
                doc["rows"].append(row)
                print({k: v for k, v in row.items() if k != "ratio_per_k"}, flush=True)
    _write(args.out, doc, "search_samples_" + args.models.replace(",", "_"))


def _write(out: str, doc: dict, stem: str) -> None:
    os.makedirs(out, exist_ok=True)
    blob = json.dumps(doc, indent=1).encode()
    atomic_write(os.path.join(out, f"{stem}.json"), lambda f: f.write(blob))
    lines = [
        "# How many noises a schedule search needs (endpoint RMSE / uniform, held-out noises)",
        "",
        f"Setup: {json.dumps(doc['setup'])}",
        "",
        f"Command: `PYTHONPATH=. python {' '.join(sys.argv)}`",
        "",
        "| model | objective | search noises | geomean K=2..10, mean [min, max] over seeds | worst K "
        "| (K, seed) cases worse than uniform | search s (mean) |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['model']} | {r['objective']} | {r['num_samples']} | {r['geomean_mean']:.4f} "
            f"[{r['geomean_min']:.4f}, {r['geomean_max']:.4f}] | {r['worst_k_ratio']:.4f} | "
            f"{r['losses']} / {r['cases']} | {np.mean(r['search_seconds']):.1f} |"
        )
    lines += ["", "Search seconds are wall time on whatever else the machine was running."]
    text = "\n".join(lines) + "\n"
    atomic_write(os.path.join(out, f"{stem}.md"), lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
