"""Schedule sets and guidance (issue 14), measured on the bundled models.

1. ``ScheduleSet.resample(K)`` for budgets outside the set, against a fresh search for K, on the digits DiT
   (1, 8, 8) and ``gmm2d_narrow`` (2,) in float64: a set of K = 1..6 resampled to K = 8 and 10. Local sets
   re-solve their saved cost table (checked equal to the fresh search, which uses the same noises); global
   sets interpolate log-linearly in sigma and snap to the grid.
2. Guided schedules on a class-conditional narrow mixture: class 0 = modes {0, 1} of ``gmm2d_narrow``
   (``flow.subset([0, 1])``, exact), unconditional = the full mixture; guided field
   ``guided_velocity(cond, flow, w)``. The schedule searched on the guided field against the one searched on
   the conditional velocity (what a search without guidance finds), both sampling the guided field, K = 2..8.

Every schedule is judged by the endpoint RMSE of its Euler sampler against ``reference_solution`` (dopri5,
rtol = atol = 1e-5) of the field it samples, on held-out noises ``seeded_noise(shape, 0, n, seed=1)``; "diff"
is the paired difference of RMSEs (a - b) with a 95% paired-bootstrap interval (``paired_bootstrap``, 1000
resamples); searches use 256 seeded noises (seed 0) on ``uniform_grid(100)``.

    PYTHONPATH=. python benchmarks/schedule_sets.py --out benchmarks/results

writes ``schedule_sets.json`` and ``schedule_sets.md`` there.
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
from boss_fast.metrics import bootstrap_weights, paired_bootstrap, rmse_statistic
from boss_fast.models import BUNDLED, load_bundled

MODELS = {
    "digits_dit": (BUNDLED["digits_dit"].shape, torch.float32),
    "gmm2d_narrow": (BUNDLED["gmm2d_narrow"].shape, torch.float64),
}


def _squared_errors(velocity, noise: torch.Tensor, ref: torch.Tensor, times) -> np.ndarray:
    x = bf.sample(velocity, noise, times)
    return (x - ref).double().square().flatten(1).mean(1).numpy()


def _compare(a: np.ndarray, b: np.ndarray, weights: np.ndarray) -> dict:
    d = paired_bootstrap(a, b, rmse_statistic, weights)
    return {
        "rmse_a": float(np.sqrt(a.mean())),
        "rmse_b": float(np.sqrt(b.mean())),
        "diff": d.estimate,
        "low": d.low,
        "high": d.high,
    }


def _held_out(velocity, shape, dtype, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    noise = bf.seeded_noise(shape, 0, n, seed=1, dtype=dtype)
    return noise, bf.reference_solution(velocity, noise, rtol=1e-5, atol=1e-5)


def resample_rows(name: str, args) -> list[dict]:
    """Resampled (a) vs fresh (b) for both objectives at each target K; uniform steps for context."""
    model = load_bundled(name)
    shape, dtype = MODELS[name]
    noise, ref = _held_out(model, shape, dtype, args.eval_samples)
    weights = bootstrap_weights(args.eval_samples)
    rows = []
    for objective in ("local", "global"):
        search = bf.SearchSettings(num_samples=args.num_samples, objective=objective)
        small = bf.optimal_schedules(model, shape, args.small, search, dtype=dtype)
        fresh = bf.optimal_schedules(model, shape, max(args.targets), search, dtype=dtype)
        for k in args.targets:
            got, want = small.resample(k), fresh[k]
            a = _squared_errors(model, noise, ref, got)
            b = _squared_errors(model, noise, ref, want)
            uniform = float(np.sqrt(_squared_errors(model, noise, ref, bf.uniform_grid(k)).mean()))
            src = got.resampled_from
            rule = "re-solved table" if src is None else f"log-linear from K={src}"
            row = {"model": name, "objective": objective, "K": k, "rule": rule}
            row.update(_compare(a, b, weights), same=bool(np.array_equal(got.indices, want.indices)))
            row.update(uniform=uniform, resampled=got.times.tolist(), fresh=want.times.tolist())
            rows.append(row)
            brief = {k2: v for k2, v in row.items() if k2 not in ("resampled", "fresh")}
            print(json.dumps(brief), flush=True)
    return rows


def guided_rows(args) -> list[dict]:
    """Searched on the guided field (a) vs on the conditional velocity (b), both sampling the guided field."""
    flow = load_bundled("gmm2d_narrow")
    cond = flow.subset([0, 1])
    weights = bootstrap_weights(args.eval_samples)
    rows = []
    for w in args.scales:
        guided = bf.guided_velocity(cond, flow, w)
        noise, ref = _held_out(guided, (2,), torch.float64, args.eval_samples)
        for objective in ("global", "local"):
            search = bf.SearchSettings(num_samples=args.num_samples, objective=objective)
            on_guided = bf.optimal_schedules(guided, (2,), 8, search, dtype=torch.float64)
            on_cond = bf.optimal_schedules(cond, (2,), 8, search, dtype=torch.float64)
            for k in range(2, 9):
                a = _squared_errors(guided, noise, ref, on_guided[k])
                b = _squared_errors(guided, noise, ref, on_cond[k])
                row = {"scale": w, "objective": objective, "K": k}
                row.update(_compare(a, b, weights))
                row.update(same=bool(np.array_equal(on_guided[k].indices, on_cond[k].indices)))
                row.update(guided_times=on_guided[k].times.tolist(), cond_times=on_cond[k].times.tolist())
                rows.append(row)
                print(json.dumps({k2: v for k2, v in row.items() if not k2.endswith("times")}), flush=True)
    return rows


def _fmt(row: dict) -> str:
    sig = "" if row["low"] <= 0.0 <= row["high"] else " *"
    return (
        f"{row['rmse_a']:.4g} | {row['rmse_b']:.4g} | {row['diff']:+.3g} [{row['low']:+.3g}, "
        f"{row['high']:+.3g}]{sig}"
    )


def markdown(resample: list[dict], guided: list[dict], meta: dict) -> str:
    lines = [
        "# Schedule sets and guidance (benchmarks/schedule_sets.py)",
        "",
        f"{meta['machine']}, torch {meta['torch']}, {meta['seconds']:.0f} s. Endpoint RMSE against dopri5 on "
        f"{meta['eval_samples']} held-out noises; diff = a - b with its 95% paired-bootstrap interval "
        "(* = excludes 0).",
        "",
        f"## resample(K) from a set of K = 1..{meta['small']} (a) vs a fresh search for K (b)",
        "",
        "| model | objective | K | rule | resampled (a) | fresh (b) | diff [95%] | same schedule | uniform |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in resample:
        lines.append(
            f"| {r['model']} | {r['objective']} | {r['K']} | {r['rule']} | {_fmt(r)} | "
            f"{'yes' if r['same'] else 'no'} | {r['uniform']:.4g} |"
        )
    lines += [
        "",
        "## gmm2d_narrow, class {0, 1}: schedule searched on the guided field (a) vs on the conditional "
        "velocity (b), both sampling the guided field",
        "",
        "| scale | objective | K | guided search (a) | conditional search (b) | diff [95%] | same schedule |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in guided:
        lines.append(
            f"| {r['scale']} | {r['objective']} | {r['K']} | {_fmt(r)} | {'yes' if r['same'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--small", type=int, default=6, help="the set's largest budget")
    parser.add_argument("--targets", type=int, nargs="+", default=[8, 10])
    parser.add_argument("--scales", type=float, nargs="+", default=[2.0, 4.0])
    parser.add_argument("--models", default="gmm2d_narrow,digits_dit")
    parser.add_argument("--skip-guided", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    resample = [row for name in args.models.split(",") if name for row in resample_rows(name, args)]
    guided = [] if args.skip_guided else guided_rows(args)
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "seconds": time.perf_counter() - start,
        "eval_samples": args.eval_samples,
        "num_samples": args.num_samples,
        "small": args.small,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "schedule_sets.json"), "w") as f:
        json.dump({"meta": meta, "resample": resample, "guided": guided}, f, indent=1)
    with open(os.path.join(args.out, "schedule_sets.md"), "w") as f:
        f.write(markdown(resample, guided, meta))
    print(markdown(resample, guided, meta))


if __name__ == "__main__":
    main()
