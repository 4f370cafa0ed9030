"""Endpoint error of the global (own-state DP) schedules against uniform, local (published BOSS) and an
oracle, on the bundled digits DiT, and the search cost of both objectives.

Setup: grid ``uniform_grid(100)``; both searches on the same 256 seeded noises (seed 0), each objective with
its default teacher (global: Heun, local: Euler, BOSS's reference); judged on 1000 held-out noises (seed 1)
against a converged dopri5 reference (``reference_solution``, rtol = atol = 1e-5); the oracle is coordinate
descent on the endpoint error (``boss_fast/oracle.py``) fitted on 256 other noises (seed 2), run from uniform
steps and, apart, from the global schedule; the oracle row is whichever of the two ends lower on the fit
noises (both are kept in the JSON). Model evaluations are counted exactly by a wrapper; times are wall clock
on whatever machine runs it.

    PYTHONPATH=. python benchmarks/quality_global.py --out benchmarks/results

(every knot tries every grid position between its neighbours, sweeping until no move helps: the exhaustive
coordinate search; ``--window W`` limits the tries to W grid points either side, which is cheaper and can
stop in a worse local optimum.)

writes ``quality_global_digits.json`` and ``quality_global_digits.md`` there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import numpy as np
import torch

import boss_fast as bf
from boss_fast.metrics import endpoint_rmse
from boss_fast.models import DIGITS_SHAPE, load_bundled
from boss_fast.oracle import oracle


class Counted(torch.nn.Module):
    """A velocity model that counts the samples it evaluates (rows of x over all calls)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.model(x, t)


def _search(model: Counted, shape, max_steps, objective, args) -> tuple[dict, float, float]:
    model.rows = 0
    start = time.perf_counter()
    solver = args.global_solver if objective == "global" else None
    scheds = bf.optimal_schedules(
        model,
        shape,
        max_steps,
        bf.SearchSettings(objective=objective, grid=args.grid, num_samples=args.num_samples, solver=solver),
    )
    seconds = time.perf_counter() - start
    return scheds, seconds, model.rows / args.num_samples


def _reference(model, noise, batch=500) -> torch.Tensor:
    return torch.cat(
        [bf.reference_solution(model, noise[i : i + batch]) for i in range(0, len(noise), batch)]
    )


def _oracle(model, fit_noise, fit_ref, grid, k, global_indices, window, rmse) -> dict:
    """The oracle from uniform steps and from the global schedule; the row keeps the one that ends lower
    on the fit noises, and both runs' figures."""
    start = time.perf_counter()
    found, chosen = oracle(
        model, fit_noise, fit_ref, grid, k, {"uniform": None, "global": global_indices}, window=window
    )
    runs = {
        name: {
            "rmse": rmse(grid[run.indices]),
            "fit_error": run.error,
            "indices": run.indices.tolist(),
            "sweeps": run.sweeps,
            "evaluations_per_noise": run.evaluations,
        }
        for name, run in found.items()
    }
    return {
        "oracle": runs[chosen]["rmse"],
        "oracle_indices": runs[chosen]["indices"],
        "oracle_start": chosen,
        "oracle_seconds": time.perf_counter() - start,
        "oracle_runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--grid", type=int, default=100)
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--fit-samples", type=int, default=256)
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--oracle-steps", type=int, default=6)
    parser.add_argument("--window", type=int, default=None, help="oracle moves within this many grid points")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--global-solver", default=None, help="global search teacher")
    parser.add_argument("--tag", default="digits", help="results file suffix")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = DIGITS_SHAPE
    model = Counted(load_bundled("digits_dit").eval())
    grid = bf.uniform_grid(args.grid)
    kmax = args.max_steps

    glob, t_glob, n_glob = _search(model, shape, kmax, "global", args)
    print(f"global search: {t_glob:.1f} s, {n_glob:.0f} evaluations per sample", flush=True)
    loc, t_loc, n_loc = _search(model, shape, kmax, "local", args)
    print(f"local search: {t_loc:.1f} s, {n_loc:.0f} evaluations per sample", flush=True)

    noise = bf.seeded_noise(shape, 0, args.eval_samples, seed=1)
    start = time.perf_counter()
    ref = _reference(model, noise)
    print(f"dopri5 reference: {time.perf_counter() - start:.1f} s", flush=True)
    fit_noise = bf.seeded_noise(shape, 0, args.fit_samples, seed=2)
    fit_ref = _reference(model, fit_noise)

    def rmse(times) -> float:
        return endpoint_rmse(bf.sample(model, noise, times), ref)

    rows = []
    for k in range(1, kmax + 1):
        row = {
            "steps": k,
            "uniform": rmse(bf.uniform_grid(k)),
            "local": rmse(loc[k].times),
            "global": rmse(glob[k].times),
            "global_indices": glob[k].indices.tolist(),
            "local_indices": loc[k].indices.tolist(),
        }
        if 2 <= k <= args.oracle_steps:
            row.update(_oracle(model, fit_noise, fit_ref, grid, k, glob[k].indices, args.window, rmse))
        rows.append(row)
        print({key: v for key, v in row.items() if not key.endswith(("indices", "runs"))}, flush=True)

    judged = [r for r in rows if r["steps"] >= 2]
    ratio = math.exp(np.mean([math.log(r["global"] / r["uniform"]) for r in judged]))
    ratio_local = math.exp(np.mean([math.log(r["local"] / r["uniform"]) for r in judged]))
    summary = {
        "global_le_uniform_every_k_2_to_10": all(r["global"] <= r["uniform"] for r in judged),
        "geomean_global_over_uniform_k_2_to_10": ratio,
        "geomean_local_over_uniform_k_2_to_10": ratio_local,
        "max_global_over_oracle": max(r["global"] / r["oracle"] for r in rows if "oracle" in r),
        "search_evaluations_per_sample": {"global": n_glob, "local": n_loc, "ratio": n_glob / n_loc},
        "search_seconds": {"global": t_glob, "local": t_loc, "ratio": t_glob / t_loc},
    }
    setup = {
        "model": "digits_dit",
        "grid": args.grid,
        "search_samples": args.num_samples,
        "search_seed": 0,
        "teachers": {"global": glob[2].solver, "local": loc[2].solver},
        "eval_samples": args.eval_samples,
        "eval_seed": 1,
        "reference": "dopri5 rtol=atol=1e-5",
        "oracle": "coordinate descent from uniform steps and from the global schedule, the lower on the fit "
        f"noises; window {args.window or 'none (exhaustive)'}, {args.fit_samples} fit noises (seed 2)",
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"quality_global_{args.tag}.json"), "w") as f:
        json.dump({"setup": setup, "summary": summary, "rows": rows}, f, indent=1)
    lines = [
        "# Global vs local vs uniform schedules, digits DiT (endpoint RMSE vs dopri5)",
        "",
        f"Setup: {json.dumps(setup)}",
        "",
        "| K | uniform | local (BOSS) | global | oracle | global vs uniform | local vs uniform "
        "| global vs oracle | oracle started from |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        oracle = f"{r['oracle']:.4f}" if "oracle" in r else ""
        vs_oracle = f"{100 * (r['global'] / r['oracle'] - 1):+.1f}%" if "oracle" in r else ""
        lines.append(
            f"| {r['steps']} | {r['uniform']:.4f} | {r['local']:.4f} | {r['global']:.4f} | {oracle} | "
            f"{100 * (r['global'] / r['uniform'] - 1):+.1f}% | "
            f"{100 * (r['local'] / r['uniform'] - 1):+.1f}% | {vs_oracle} | {r.get('oracle_start', '')} |"
        )
    lines += [
        "",
        f"Geomean over K = 2..10, global / uniform: {ratio:.4f}; local / uniform: {ratio_local:.4f}.",
        f"Search on the same grid and noises: global {n_glob:.0f} model evaluations per sample "
        f"({t_glob:.1f} s), local {n_loc:.0f} ({t_loc:.1f} s): {n_glob / n_loc:.2f}x evaluations, "
        f"{t_glob / t_loc:.2f}x time.",
        "",
    ]
    with open(os.path.join(args.out, f"quality_global_{args.tag}.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
