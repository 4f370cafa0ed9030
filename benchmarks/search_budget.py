"""What a schedule search buys for its model evaluations: the DP route (full / coarse), the polish of the
start knot and the number of noises, judged on held-out noises against the previous default.

For each model, every row is one search for every budget K = 1..10 on ``uniform_grid(100)`` (search seed 0,
or ``--seed``; start rule "noise", Heun teacher) with the row's settings; its model evaluations are counted
exactly (a counting wrapper: every row of every model call). Every schedule is sampled with K-step Euler
from 1000 held-out noises (seed 1) from its start state and judged against a dopri5 reference
(rtol = atol = 1e-5) from the same noises: pooled endpoint RMSE (and for the digits FD to held-out digits at
K = 2, 4, 8), each difference to the baseline row ``base`` (the default before polishing: full DP, 256
noises, no polish, the same seed) with a paired-bootstrap 95% interval (1000 resamples; 200 for FD).
The interval sees the held-out noises only, not the search's own: ``benchmarks/search_seeds.py`` runs rows
over ten search seeds and judges their mean. OptimalSteps' figures are quoted from the issue that measured
them (their published search run unchanged on this grid and the seed-0 search noises; not re-run here, and
shown only for seed 0).

    PYTHONPATH=. python benchmarks/search_budget.py --model digits_dit
    PYTHONPATH=. python benchmarks/search_budget.py --model gmm2d_narrow
    PYTHONPATH=. python benchmarks/search_budget.py --model five_gaussians

writes ``search_budget_<model>.json`` and ``.md`` in ``--out`` (default benchmarks/results;
``_seed<S>`` added to the stem with ``--seed S``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time

import numpy as np
import torch

import boss_fast as bf
from benchmarks.auto_samples import five_gaussians
from benchmarks.quality_global import Counted
from benchmarks.start_search import OPTIMAL_STEPS
from boss_fast._identity import model_fingerprint
from boss_fast._validation import atomic_write
from boss_fast.demo import DEMO_MODELS, cached_reference
from boss_fast.metrics import (
    bootstrap_statistics,
    bootstrap_weights,
    digits_features,
    fd_statistic,
    paired_difference,
    rmse_statistic,
)
from boss_fast.models import digits, load_bundled
from boss_fast.ode import sample, start_state

MAX_STEPS = 10
BASE = "base"
HELD_OUT_SEED = 1  # the held-out noises' seed: never a search's
# name -> (dp, noises, polish, start rule); "pinned" (start at t = 0, full DP) only when asked for (--rows)
ROWS = {
    BASE: ("full", 256, "none", "noise"),
    "full+polish/256": ("full", 256, "start", "noise"),
    "coarse/256": ("coarse", 256, "none", "noise"),
    "coarse+polish/256": ("coarse", 256, "start", "noise"),
    "coarse+polish/128": ("coarse", 128, "start", "noise"),
    "coarse+polish/64": ("coarse", 64, "start", "noise"),
    "pinned": ("full", 256, "none", "zero"),
}
DEFAULT_ROWS = [r for r in ROWS if r != "pinned"]
FD_STEPS = (2, 4, 8)


def _model(name: str) -> tuple[torch.nn.Module, tuple[int, ...], torch.dtype]:
    if name == "five_gaussians":
        return five_gaussians(), (2,), torch.float64
    spec = DEMO_MODELS[name]
    return load_bundled(name, dtype=spec.dtype).eval(), spec.shape, spec.dtype


def parse_rows(text: str) -> list[str]:
    """The rows of ``--rows`` (comma-separated names of ROWS), ``base`` first whether named or not."""
    names = [BASE] + [r for r in text.split(",") if r and r != BASE]
    unknown = [r for r in names if r not in ROWS]
    if unknown:
        raise SystemExit(f"--rows: unknown {unknown}; choose from {list(ROWS)}")
    return names


def refuse_held_out(seeds: list[int], flag: str) -> None:
    """Refuse (exit, naming ``flag``) search seeds below 0 or equal to the held-out noises' seed."""
    bad = [s for s in seeds if s < 0 or s == HELD_OUT_SEED]
    if bad:
        raise SystemExit(
            f"{flag} {', '.join(map(str, bad))}: seed {HELD_OUT_SEED} draws the held-out noises; "
            "choose search seeds >= 0 other than it"
        )


def held_out(name: str, eval_samples: int, report: str | None):
    """(model, shape, dtype, noises, reference): the model, ``eval_samples`` held-out noises (seed
    HELD_OUT_SEED) and their dopri5 endpoints, cached in ``report`` (default /tmp/search_budget_<name>)."""
    torch.manual_seed(0)
    model, shape, dtype = _model(name)
    report = report or f"/tmp/search_budget_{name}"
    os.makedirs(report, exist_ok=True)
    noise = bf.seeded_noise(shape, 0, eval_samples, seed=HELD_OUT_SEED, dtype=dtype)
    ref, _ = cached_reference(model, noise, os.path.join(report, f"reference_{name}.safetensors"),
                              fingerprint=model_fingerprint(model))  # fmt: skip
    return model, shape, dtype, noise, ref


def _search(model, shape, dtype, dp: str, noises: int, polish: str, start: str, seed: int = 0):
    """(schedules, evaluations per noise, seconds) of one row's search."""
    counted = Counted(model)
    settings = bf.SearchSettings(num_samples=noises, dp=dp, polish=polish, start=start, seed=seed)
    t0 = time.perf_counter()
    found = bf.optimal_schedules(counted, shape, MAX_STEPS, settings, dtype=dtype)
    return found, counted.rows / noises, time.perf_counter() - t0


@torch.no_grad()
def _endpoints(model, noise: torch.Tensor, start: str, times: np.ndarray) -> torch.Tensor:
    """K-step Euler endpoints of ``noise`` on ``times`` from the ``start`` rule's state, in chunks of 250."""
    return torch.cat([sample(model, start_state(part, start, float(times[0])), times)
                      for part in noise.split(250)])  # fmt: skip


def _per_noise(x: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    """(n,) float64 per-noise mean squared error of endpoints ``x`` against ``ref``."""
    return (x.double() - ref.double()).flatten(1).square().mean(dim=1).numpy()


def squared_errors(
    model, noise: torch.Tensor, ref: torch.Tensor, start: str, times: np.ndarray
) -> np.ndarray:
    """(n,) float64 per-noise mean squared endpoint error against ``ref``, the held-out reference."""
    return _per_noise(_endpoints(model, noise, start, times), ref)


def _judge(name: str, model, noise, ref, found: dict, weights, fd) -> dict:
    """{row: {K: {rmse, d_rmse, ci, (fd, d_fd, fd_ci)}}} against the base row, paired."""
    out: dict = {row: {} for row in found}
    fd_weights = weights[:200]
    for k in range(1, MAX_STEPS + 1):
        stats, fstats = {}, {}
        for row, sset in found.items():
            x = _endpoints(model, noise, sset[k].start, sset[k].times)
            stats[row] = bootstrap_statistics(_per_noise(x, ref), rmse_statistic, weights)
            out[row][k] = {"rmse": float(stats[row][0]), "indices": sset[k].indices.tolist()}
            if fd is not None and k in FD_STEPS:
                fstats[row] = bootstrap_statistics(digits_features(x), fd, fd_weights)
                out[row][k]["fd"] = float(fstats[row][0])
        for row in found:
            d = paired_difference(stats[row], stats[BASE])
            out[row][k].update(d_rmse=d.estimate, ci=[d.low, d.high])
            if row in fstats:
                f = paired_difference(fstats[row], fstats[BASE])
                out[row][k].update(d_fd=f.estimate, fd_ci=[f.low, f.high])
    return out


def _cell(v: dict, key: str, d: str, ci: str, digits_: int) -> str:
    if key not in v:
        return ""
    if d not in v or v[d] == 0.0 and v[ci] == [0.0, 0.0]:
        return f"{v[key]:.{digits_}f}"
    lo, hi = v[ci]
    mark = "**" if hi < 0 else ""
    return f"{mark}{v[key]:.{digits_}f}{mark} [{lo:+.{digits_}f}, {hi:+.{digits_}f}]"


def _markdown(name: str, command: str, rows: dict, judged: dict, setup: dict) -> str:
    lines = [f"# Search budget: {name} (search seed {setup['seed']})", "", f"Command: `{command}`", "",
             f"Machine: {setup['machine']}; torch {setup['torch']}. {setup['note']}", "",
             "| row | DP | noises | polish | start | evaluations per noise | in all | x base | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    base_total = rows[BASE]["per_noise"] * rows[BASE]["noises"]
    for row, r in rows.items():
        total = r["per_noise"] * r["noises"]
        lines.append(f"| {row} | {r['dp']} | {r['noises']} | {r['polish']} | {r.get('start', 'noise')} | "
                     f"{r['per_noise']:.1f} | "
                     f"{total:,.0f} | {total / base_total:.3f} | {r['wall_s']:.1f} |")  # fmt: skip
    quoted = OPTIMAL_STEPS.get(name, {}) if setup["seed"] == 0 else {}
    for metric, d, ci, digits_, ks in (("rmse", "d_rmse", "ci", 4, range(1, MAX_STEPS + 1)),
                                      ("fd", "d_fd", "fd_ci", 1, FD_STEPS)):  # fmt: skip
        if not any(metric in judged[BASE][k] for k in ks):
            continue
        title = "pooled RMSE" if metric == "rmse" else "FD"
        lines += ["", f"## Held-out {title} (lower is better; [95% paired interval of the difference to "
                  f"`{BASE}`], bold where it lies below 0)", "",
                  "| K | " + " | ".join(judged) + (" | OptimalSteps (quoted) |" if quoted else " |"),
                  "|---" * (len(judged) + 1 + bool(quoted)) + "|"]  # fmt: skip
        for k in ks:
            cells = [_cell(judged[row][k], metric, d, ci, digits_) for row in judged]
            q = quoted.get(metric, {}).get(k, "")
            lines.append(f"| {k} | " + " | ".join(cells) + (f" | {q} |" if quoted else " |"))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="digits_dit", choices=["digits_dit", "gmm2d_narrow", "five_gaussians"])
    ap.add_argument(
        "--rows", default=",".join(DEFAULT_ROWS), help="comma-separated rows of ROWS (base always runs)"
    )
    ap.add_argument("--tag", default="search_budget", help="the output files' stem, before the model's name")
    ap.add_argument("--seed", type=int, default=0, help="the searches' noise seed (not 1: the held-out one)")
    ap.add_argument("--eval-samples", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--report", default=None, help="folder of the cached reference (default /tmp/...)")
    args = ap.parse_args()
    names = parse_rows(args.rows)
    refuse_held_out([args.seed], "--seed")
    model, shape, dtype, noise, ref = held_out(args.model, args.eval_samples, args.report)
    rows, found = {}, {}
    for row in names:
        dp, m, polish, start = ROWS[row]
        found[row], per_noise, wall = _search(model, shape, dtype, dp, m, polish, start, args.seed)
        rows[row] = {"dp": dp, "noises": m, "polish": polish, "start": start, "per_noise": per_noise,
                     "wall_s": wall}  # fmt: skip
        print(f"{row}: {per_noise:.1f} evaluations per noise, {wall:.1f} s", flush=True)
    fd = fd_statistic(digits_features(digits("test")[0])) if args.model == "digits_dit" else None
    judged = _judge(
        args.model, model, noise, ref, found, bootstrap_weights(args.eval_samples, 1000, seed=0), fd
    )
    command = "PYTHONPATH=. python " + " ".join(shlex.quote(a) for a in sys.argv)
    setup = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
             "seed": args.seed,
             "note": "Wall times from a shared machine: an upper bound."}  # fmt: skip
    payload = {"command": command, "setup": setup, "rows": rows, "judged": judged}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{args.tag}_{args.model}" + (f"_seed{args.seed}" if args.seed else ""))
    md = _markdown(args.model, command, rows, judged, setup)
    atomic_write(stem + ".json", lambda f: f.write(json.dumps(payload, indent=1).encode()))
    atomic_write(stem + ".md", lambda f: f.write(md.encode()))
    print(md)


if __name__ == "__main__":
    main()
