"""The main job, ``boss-fast demo``: BOSS stage 1 on the bundled digits DiT, against the usual schedules.

Computes the cost matrix once per teacher (grid 100, 256 noises; the Euler teacher as published, and a
Heun teacher), solves every budget 1..max_nfe from one Bellman table each, and compares at each NFE the
Bellman schedules with uniform steps, the SD3-style shifted schedule and the EDM (rho = 7) schedule: FD to
held-out digits (bundled classifier) and endpoint RMSE against a 200-step Euler teacher from the same
noises. Writes a report folder. With ``straighten=True`` it also fine-tunes the DiT for the Bellman NFE 2 and
4 schedules (BOSS stage 2, ``boss_fast.straighten``) and reports those rows apart.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from boss_fast import report
from boss_fast._validation import atomic_write
from boss_fast.grids import edm_grid, shifted_grid, uniform_grid
from boss_fast.metrics import digits_fd, endpoint_rmse
from boss_fast.models import load_bundled
from boss_fast.ode import sample
from boss_fast.schedule import schedules_from_cost
from boss_fast.search import cost_matrix
from boss_fast.straighten import straighten
from boss_fast.trajectories import model_fingerprint, seeded_noise

__all__ = ["DemoConfig", "run_demo"]

DIGITS_SHAPE = (1, 8, 8)
BASELINES = {
    "uniform": uniform_grid,
    "shifted (SD3, shift 3)": lambda k: shifted_grid(k, shift=3.0),
    "EDM (rho 7)": lambda k: edm_grid(k, rho=7.0),
}


@dataclass(frozen=True)
class DemoConfig:
    out: str = "report"
    grid: int = 100
    num_samples: int = 256
    max_nfe: int = 10
    eval_samples: int = 1000
    reference_steps: int = 200
    seed: int = 0
    progress: bool = True
    grid_nfes: tuple[int, ...] = field(default=(2, 4, 8))
    straighten: bool = False
    # 800 iterations of batch 64 on 2000 noises' pairs: about 30 s per NFE on 2 CPU cores, teacher pairs
    # included (measured); `boss-fast demo --straighten` took 1 min 55 s in all, FD 411 -> 42 at NFE 2.
    straighten_iters: int = 800
    straighten_pairs: int = 2000
    straighten_nfes: tuple[int, ...] = field(default=(2, 4))


@torch.no_grad()
def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo and write its report to ``cfg.out``; returns the results dictionary it saved."""
    if cfg.max_nfe < 1 or cfg.max_nfe > cfg.grid:
        raise ValueError(f"max_nfe must be in [1, grid = {cfg.grid}], got {cfg.max_nfe}")
    os.makedirs(os.path.join(cfg.out, "schedules"), exist_ok=True)
    wall = {}
    model = load_bundled("digits_dit")
    fingerprint = model_fingerprint(model)

    times = uniform_grid(cfg.grid)
    noise = seeded_noise(DIGITS_SHAPE, 0, cfg.num_samples, seed=cfg.seed)
    bellman: dict[str, list] = {}
    # The published Euler teacher has cost[i, i+1] = 0 by construction (its own steps are "free"); a Heun
    # teacher on the same grid measures every jump against a more accurate trajectory.
    for solver, label in (("euler", "Bellman (BOSS)"), ("heun", "Bellman, Heun teacher")):
        t0 = time.perf_counter()
        cost = cost_matrix(
            model, noise, times, batch_size=cfg.num_samples, solver=solver, progress=cfg.progress
        )
        wall[f"cost matrix ({solver} teacher)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        bellman[label] = schedules_from_cost(
            cost, times, cfg.max_nfe, solver=solver, num_samples=cfg.num_samples, fingerprint=fingerprint
        )
        wall[f"Bellman DP, every budget ({solver})"] = time.perf_counter() - t0
        atomic_write(os.path.join(cfg.out, f"cost_matrix_{solver}.npy"), lambda f, c=cost: np.save(f, c))
        for sched in bellman[label]:
            sched.save(os.path.join(cfg.out, "schedules", f"bellman_{solver}_nfe{sched.steps}.json"))

    t0 = time.perf_counter()
    # Held-out noise stream (seed + 1), never the one the schedule was fitted on.
    eval_noise = seeded_noise(DIGITS_SHAPE, 0, cfg.eval_samples, seed=cfg.seed + 1)
    reference = sample(model, eval_noise, uniform_grid(cfg.reference_steps))
    references = {f"{cfg.reference_steps}-step Euler": digits_fd(reference)}
    nfes = list(range(1, cfg.max_nfe + 1))
    schedules = {name: {k: make(k) for k in nfes} for name, make in BASELINES.items()}
    for label, scheds in bellman.items():
        schedules[label] = {s.steps: s.times for s in scheds}
    results: dict[str, dict[int, dict[str, float]]] = {name: {} for name in schedules}
    grids: dict[int, dict[str, np.ndarray]] = {k: {} for k in cfg.grid_nfes if k <= cfg.max_nfe}
    jobs = [(name, k) for name in schedules for k in nfes]
    for name, k in tqdm(jobs, desc="evaluate", disable=not cfg.progress):
        x = sample(model, eval_noise, schedules[name][k])
        results[name][k] = {"fd": digits_fd(x), "rmse": endpoint_rmse(x, reference)}
        if k in grids:
            grids[k][name] = x[:16].numpy()
    wall["evaluation"] = time.perf_counter() - t0

    straightened = _straightened_rows(
        cfg, model, bellman["Bellman (BOSS)"], eval_noise, reference, results, wall
    )
    _write_report(cfg, results, references, schedules, grids, nfes, wall, straightened)
    summary = {
        "config": {k: v for k, v in cfg.__dict__.items()},
        "model": {"name": "digits_dit", "fingerprint": fingerprint},
        "references": references,
        "results": {name: {str(k): v for k, v in per.items()} for name, per in results.items()},
        "schedules": {
            name: {str(k): [float(t) for t in ts] for k, ts in per.items()} for name, per in schedules.items()
        },
        "wall_s": wall,
    }
    if straightened:
        summary["straightened"] = {str(k): v for k, v in straightened.items()}
    report.save_json(os.path.join(cfg.out, "results.json"), summary)
    return summary


def _straightened_rows(cfg, model, scheds, eval_noise, reference, results, wall) -> dict:
    """BOSS stage 2 for the Bellman schedules of ``cfg.straighten_nfes``: {nfe: {fd, rmse, bellman_fd}}."""
    if not cfg.straighten:
        return {}
    rows = {}
    for k in (k for k in cfg.straighten_nfes if k <= cfg.max_nfe):
        t0 = time.perf_counter()
        with torch.enable_grad():
            student = straighten(
                model,
                scheds[k - 1],
                num_pairs=cfg.straighten_pairs,
                grid=cfg.grid,
                iters=cfg.straighten_iters,
                warmup=min(100, cfg.straighten_iters),
                ema=0.99,  # 0.999 would still weigh the first steps of a run this short
                seed=cfg.seed,
                progress=cfg.progress,
            )
        x = sample(student, eval_noise, scheds[k - 1])
        rows[k] = {
            "fd": digits_fd(x),
            "rmse": endpoint_rmse(x, reference),
            "bellman_fd": results["Bellman (BOSS)"][k]["fd"],
        }
        wall[f"straightening, NFE {k} ({cfg.straighten_iters} iterations)"] = time.perf_counter() - t0
    return rows


def _write_report(cfg, results, references, schedules, grids, nfes, wall, straightened=None) -> None:
    fd = report.markdown_table(results, "fd", nfes)
    rmse = report.markdown_table(results, "rmse", nfes, digits=3)
    refs = "\n".join(f"- {name}: FD {value:.2f}" for name, value in references.items())
    timing = "\n".join(f"- {name}: {seconds:.1f} s" for name, seconds in wall.items())
    text = (
        "# boss_fast demo: Bellman step sizes on the bundled digits DiT\n\n"
        f"Cost matrices: uniform grid of {cfg.grid} steps, {cfg.num_samples} noises, Euler teacher (as "
        f"published) and Heun teacher. Evaluation: {cfg.eval_samples} held-out noises "
        f"(seed {cfg.seed + 1}).\n\n"
        "## FD to held-out digits (bundled classifier features; lower is better)\n\n"
        f"{fd}\nReference:\n{refs}\n\n"
        f"## Endpoint RMSE against the {cfg.reference_steps}-step Euler teacher (same noises)\n\n{rmse}\n"
        f"{_straightened_table(cfg, straightened)}"
        f"## Wall time\n\n{timing}\n"
    )
    report.save_text(os.path.join(cfg.out, "results.md"), text)
    report.plot_quality(results, nfes, os.path.join(cfg.out, "quality_vs_nfe.png"), references)
    report.plot_schedules(
        {k: np.asarray(schedules["Bellman (BOSS)"][k]) for k in nfes},
        os.path.join(cfg.out, "bellman_steps.png"),
    )
    for k, rows in grids.items():
        report.save_sample_grid(rows, os.path.join(cfg.out, f"samples_nfe{k}.png"), title=f"NFE = {k}")


def _straightened_table(cfg, straightened) -> str:
    if not straightened:
        return ""
    lines = ["| NFE | Bellman FD | straightened FD | straightened RMSE |", "|---:|---:|---:|---:|"]
    for k, row in straightened.items():
        lines.append(f"| {k} | {row['bellman_fd']:.2f} | {row['fd']:.2f} | {row['rmse']:.3f} |")
    return (
        "## BOSS stage 2: straightened for the Bellman steps (Euler teacher)\n\n"
        f"{cfg.straighten_iters} iterations, batch 64, pairs from {cfg.straighten_pairs} noises.\n\n"
        + "\n".join(lines)
        + "\n\n"
    )
