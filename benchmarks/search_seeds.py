"""The schedule search's rows over many search seeds: what a user gets on average from a search, not from one
draw of its noises.

``benchmarks/search_budget.py`` judges each row on 1000 held-out noises with a paired interval, for one
search seed. That interval sees the held-out noises only: a search with another seed draws other noises and
picks other knots, and the base row re-drawn is itself significantly worse than its own other draws at some
K. This benchmark runs every row with each of ``--seeds`` (default 10 seeds, never seed 1, which draws the
held-out noises), judges every schedule on the same held-out noises against a dopri5 reference, and reports
per row and K:

- the held-out pooled RMSE averaged over the seeds and the difference to ``base`` (full DP, 256 noises, no
  polish) with a two-level 95% interval (``boss_fast.metrics.seed_mean_difference``: resampling both the
  seeds and the held-out noises), bold below 0, marked "worse" above 0;
- in how many seeds the row's one-seed paired interval lies above 0 (what ``search_budget.py --seed S``
  would call worse), beside how often ``base`` re-drawn is worse than itself: the ordered pairs of seeds
  (s, s') where base of seed s' is worse than base of seed s, as a share of all pairs.

    PYTHONPATH=. python benchmarks/search_seeds.py --model gmm2d_narrow
    PYTHONPATH=. python benchmarks/search_seeds.py --model five_gaussians
    PYTHONPATH=. python benchmarks/search_seeds.py --model digits_dit

writes ``search_seeds_<model>.json`` and ``.md`` in ``--out`` (default benchmarks/results). Each search's
schedules are saved as it ends (``<stem>.partial.json``, written atomically); a rerun of the same command
resumes from them and deletes the file when the report is written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys

import numpy as np
import torch

from benchmarks.search_budget import (
    BASE,
    DEFAULT_ROWS,
    MAX_STEPS,
    ROWS,
    _search,
    held_out,
    parse_rows,
    refuse_held_out,
    squared_errors,
)
from boss_fast._identity import model_fingerprint
from boss_fast._validation import atomic_write
from boss_fast.metrics import (
    bootstrap_statistics,
    bootstrap_weights,
    paired_difference,
    rmse_statistic,
    seed_mean_difference,
)

DEFAULT_SEEDS = (0, 2, 3, 4, 5, 6, 7, 8, 9, 10)
SEED_ROWS = [BASE, "coarse+polish/256", "coarse+polish/128", "coarse+polish/64"]


def parse_seeds(text: str) -> list[int]:
    """The search seeds of ``--seeds`` ("0,2,3"): at least two, distinct, >= 0 and never the held-out seed."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds {text!r}: comma-separated integers, e.g. 0,2,3") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds {text!r}: at least two distinct seeds")
    refuse_held_out(seeds, "--seeds")
    return seeds


def _partial(path: str, header: dict) -> dict:
    """The searches a previous run of the same command saved ({"row@seed": result}), else {}."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        saved = json.load(f)
    return saved["done"] if saved.get("header") == header else {}


def run_searches(model, shape, dtype, rows: list[str], seeds: list[int], path: str, header: dict) -> dict:
    """{"row@seed": {"per_noise", "wall_s", "start", "times": [K = 1 .. MAX_STEPS]}} of every search, resumed
    from and saved to ``path`` after each one."""
    done = _partial(path, header)
    for row in rows:
        dp, m, polish, start = ROWS[row]
        for seed in seeds:
            key = f"{row}@{seed}"
            if key in done:
                continue
            found, per_noise, wall = _search(model, shape, dtype, dp, m, polish, start, seed)
            done[key] = {"per_noise": per_noise, "wall_s": wall, "start": found[1].start,
                         "times": [found[k].times.tolist() for k in range(1, MAX_STEPS + 1)]}  # fmt: skip
            payload = json.dumps({"header": header, "done": done}).encode()
            atomic_write(path, lambda f, b=payload: f.write(b))
            print(f"{key}: {per_noise:.1f} evaluations per noise, {wall:.1f} s", flush=True)
    return done


def _statistics(model, noise, ref, found: dict, weights) -> np.ndarray:
    """(K, R + 1): each budget's held-out RMSE (entry 0) and its resamples, of one search."""
    return np.stack([bootstrap_statistics(squared_errors(model, noise, ref, found["start"], np.asarray(t)),
                                          rmse_statistic, weights) for t in found["times"]])  # fmt: skip


def judge(model, noise, ref, done: dict, rows: list[str], seeds: list[int], weights) -> dict:
    """Every row's seed-mean held-out RMSE per K against ``base``'s, and the one-seed verdicts beside base's
    own re-draws (see the module docstring)."""
    stats = {row: np.stack([_statistics(model, noise, ref, done[f"{row}@{s}"], weights) for s in seeds])
             for row in rows}  # fmt: skip
    base = stats[BASE]
    out = {"rows": {}, "base_redrawn_worse": []}
    for row in rows:
        per_k = []
        for k in range(MAX_STEPS):
            d = seed_mean_difference(stats[row][:, k], base[:, k])
            worse = [paired_difference(stats[row][i, k], base[i, k]).low > 0 for i in range(len(seeds))]
            per_k.append({"rmse": float(stats[row][:, k, 0].mean()), "d_rmse": d.estimate,
                          "ci": [d.low, d.high], "seeds_worse": int(sum(worse))})  # fmt: skip
        per_noise = [done[f"{row}@{s}"]["per_noise"] for s in seeds]
        out["rows"][row] = {"per_noise": per_noise, "k": per_k}
    pairs = [(i, j) for i in range(len(seeds)) for j in range(len(seeds)) if i != j]
    for k in range(MAX_STEPS):
        worse = sum(paired_difference(base[j, k], base[i, k]).low > 0 for i, j in pairs)
        out["base_redrawn_worse"].append(worse / len(pairs))
    return out


def _verdicts(v: dict) -> str:
    worse = [str(k) for k, c in enumerate(v["k"], 1) if c["ci"][0] > 0]
    better = [str(k) for k, c in enumerate(v["k"], 1) if c["ci"][1] < 0]
    return f"worse at K = {', '.join(worse) or 'none'}; better at K = {', '.join(better) or 'none'}"


def markdown(name: str, command: str, seeds: list[int], judged: dict, setup: dict) -> str:
    rows = judged["rows"]
    base_total = np.mean(rows[BASE]["per_noise"]) * ROWS[BASE][1]
    lines = [f"# Search seeds: {name} ({len(seeds)} search seeds: {', '.join(map(str, seeds))})", "",
             f"Command: `{command}`", "", f"Machine: {setup['machine']}; torch {setup['torch']}.", "",
             "Every row searched once per seed; every schedule judged on the same held-out noises (seed 1) "
             "against dopri5.", "",
             "| row | DP | noises | polish | evaluations per noise (mean, min-max over seeds) | in all | "
             "x base | seed-mean RMSE vs base (two-level 95% interval) |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row, v in rows.items():
        dp, m, polish, _ = ROWS[row]
        per = np.asarray(v["per_noise"])
        lines.append(f"| {row} | {dp} | {m} | {polish} | {per.mean():.1f} "
                     f"({per.min():.1f}-{per.max():.1f}) | {per.mean() * m:,.0f} | "
                     f"{per.mean() * m / base_total:.3f} | "
                     f"{'-' if row == BASE else _verdicts(v)} |")  # fmt: skip
    lines += ["", f"## Held-out pooled RMSE, mean over the {len(seeds)} seeds ([two-level 95% interval of "
              f"the difference to `{BASE}`], bold below 0, *worse* above 0)", "",
              "| K | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]  # fmt: skip
    for k in range(MAX_STEPS):
        cells = []
        for row, v in rows.items():
            c = v["k"][k]
            if row == BASE:
                cells.append(f"{c['rmse']:.4f}")
                continue
            lo, hi = c["ci"]
            mark = "**" if hi < 0 else "*" if lo > 0 else ""
            worse = " worse" if lo > 0 else ""
            cells.append(f"{mark}{c['rmse']:.4f}{mark} [{lo:+.4f}, {hi:+.4f}]{worse}")
        lines.append(f"| {k + 1} | " + " | ".join(cells) + " |")
    lines += ["", "## One-seed verdicts: seeds whose own paired interval lies above 0 (of "
              f"{len(seeds)}), beside base re-drawn", "",
              "| K | base re-drawn (share of ordered seed pairs) | "
              + " | ".join(r for r in rows if r != BASE) + " |",
              "|---" * len(rows) + "|---|"]  # fmt: skip
    for k in range(MAX_STEPS):
        cells = [str(v["k"][k]["seeds_worse"]) for row, v in rows.items() if row != BASE]
        lines.append(f"| {k + 1} | {judged['base_redrawn_worse'][k]:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    models = ["digits_dit", "gmm2d_narrow", "five_gaussians"]
    ap.add_argument("--model", default="gmm2d_narrow", choices=models)
    ap.add_argument("--rows", default=",".join(SEED_ROWS), help=f"rows of {DEFAULT_ROWS}, base always runs")
    ap.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)))
    ap.add_argument("--eval-samples", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--report", default=None, help="folder of the cached reference (default /tmp/...)")
    args = ap.parse_args()
    seeds = parse_seeds(args.seeds)
    rows = parse_rows(args.rows)
    model, shape, dtype, noise, ref = held_out(args.model, args.eval_samples, args.report)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"search_seeds_{args.model}")
    header = {"model": args.model, "fingerprint": model_fingerprint(model), "max_steps": MAX_STEPS,
              "rows": {r: list(ROWS[r]) for r in rows}}  # fmt: skip
    done = run_searches(model, shape, dtype, rows, seeds, stem + ".partial.json", header)
    judged = judge(model, noise, ref, done, rows, seeds, bootstrap_weights(args.eval_samples, 1000, seed=0))
    command = "PYTHONPATH=. python " + " ".join(shlex.quote(a) for a in sys.argv)
    setup = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__}
    payload = {"command": command, "setup": setup, "seeds": seeds, "judged": judged,
               "schedules": {f"{r}@{s}": done[f"{r}@{s}"]["times"] for r in rows for s in seeds}}  # fmt: skip
    md = markdown(args.model, command, seeds, judged, setup)
    atomic_write(stem + ".json", lambda f: f.write(json.dumps(payload, indent=1).encode()))
    atomic_write(stem + ".md", lambda f: f.write(md.encode()))
    os.remove(stem + ".partial.json")
    print(md)


if __name__ == "__main__":
    main()
