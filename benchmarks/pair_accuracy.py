"""How close the straightening pairs' teacher lands to the exact flow, by teacher, on the bundled digits DiT.

For the Bellman schedules of K = 2 and 4 (256 search noises, 100-step grid, as ``straighten_sweep.py``), the
pairs' targets (the teacher's states at tau_1 .. tau_K) from 300 other noises (seed 5) under each teacher,
against the same states from dopri5 (rtol = atol = 1e-5): the RMSE per knot, and the teacher's model
evaluations per noise (the pilot of the "adaptive" spacing, 32 noises x 100 steps, counted apart).

    PYTHONPATH=. python benchmarks/pair_accuracy.py --out benchmarks/results/pair_accuracy.md
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys

import torch

import boss_fast as bf
from boss_fast._validation import atomic_write
from boss_fast.models import DIGITS_SHAPE, load_bundled
from boss_fast.straighten import PairTeacher

pairs_module = importlib.import_module("boss_fast.straighten.pairs")

# label -> (pair_steps, pair_solver, pair_spacing, evaluations per noise)
TEACHERS = {
    "Euler 100, the schedule's grid (BOSS's own)": (None, None, "uniform", 100),
    "Euler 25, uniform": (25, "euler", "uniform", 25),
    "Heun 12, uniform": (12, "heun", "uniform", 24),
    "Heun 12, adaptive (the default)": (12, "heun", "adaptive", 24),
    "Heun 25, uniform": (25, "heun", "uniform", 50),
    "Heun 25, adaptive": (25, "heun", "adaptive", 50),
    "RK4 6, adaptive": (6, "rk4", "adaptive", 24),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--noises", type=int, default=300)
    ap.add_argument("--out", default="benchmarks/results/pair_accuracy.md")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_bundled("digits_dit")
    grid = bf.uniform_grid(100)
    search = bf.seeded_noise(DIGITS_SHAPE, 0, 256, seed=0)
    cost = bf.cost_matrix(model, search, grid, batch_size=256, progress=False)
    bellman = dict(bf.schedules_from_cost(cost, 4, grid=grid, num_samples=256))
    noise = bf.seeded_noise(DIGITS_SHAPE, 0, args.noises, seed=5)
    rows = []
    with torch.no_grad():
        for k in (2, 4):
            sched = bellman[k]
            exact = pairs_module.straightening_pairs(
                model, sched, noise, 100, pair_teacher=PairTeacher(100, "dopri5")
            ).end.reshape(args.noises, k, -1)
            for label, (steps, solver, spacing, evals) in TEACHERS.items():
                got = pairs_module.straightening_pairs(
                    model, sched, noise, 100, pair_teacher=PairTeacher(steps, solver, spacing)
                ).end.reshape(args.noises, k, -1)
                rmse = (got - exact).double().square().mean(dim=(0, 2)).sqrt().tolist()
                rows.append((k, label, evals, rmse))
                print(k, label, [f"{v:.5f}" for v in rmse], flush=True)
    lines = [
        "# The straightening pairs' teacher against dopri5 (digits DiT, CPU)\n",
        f"Command: `PYTHONPATH=. python {' '.join(sys.argv)}`\n",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}. Bellman "
        f"schedules (256 noises, grid 100); {args.noises} noises (seed 5); RMSE of the teacher's state "
        "at each knot against dopri5 (rtol = atol = 1e-5). Evaluations: per noise, without the adaptive "
        "spacing's pilot (32 noises x 100 Euler steps once per run).\n",
    ]
    for k in (2, 4):
        lines.append(f"\n## K = {k}: times {bellman[k].times.round(2).tolist()}\n")
        knots = " | ".join(f"tau_{j}" for j in range(1, k + 1))
        lines.append(f"| teacher | evaluations per noise | {knots} |")
        lines.append("|---|---|" + "---|" * k)
        for kk, label, evals, rmse in rows:
            if kk == k:
                lines.append(f"| {label} | {evals} | " + " | ".join(f"{v:.5f}" for v in rmse) + " |")
    text = "\n".join(lines) + "\n"
    atomic_write(args.out, lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
