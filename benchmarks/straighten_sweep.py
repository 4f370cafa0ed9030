"""Straightening the bundled digits DiT: FD against the LoRA settings and against the pairs' cost.

Every run is ``bf.straighten`` on the Bellman schedule (256 noises, grid 100) at K = 2 or 4 with the
settings of ``scripts/straighten_digits.py`` (batch 64, EMA 0.999 with warm-up, Adam, clip 1.0) unless the
case says otherwise; FD (``digits_fd``) on 1000 held-out noises (seed 1; the pairs use ``seed``). Each
finished run is appended at once to a JSON lines file, and a run already there (same case, K, seed and
settings) is skipped, so a cut sweep keeps what it measured and a rerun of the command continues it.

    PYTHONPATH=. python benchmarks/straighten_sweep.py --phase lora-coarse \
        --jsonl benchmarks/results/straighten_sweep.jsonl
    PYTHONPATH=. python benchmarks/straighten_sweep.py --report \
        --jsonl benchmarks/results/straighten_sweep.jsonl \
        --md benchmarks/results/straighten_sweep_lora.md --phases lora-coarse,lora

(``PYTHONPATH=.``: this checkout's boss_fast; python puts the script's folder, not the root, on the path.)

The pairs of the teacher on the schedule's own grid are computed once per (noise seed, solver) for the most
noises any case asks and sliced for the others (the noises are a prefix of one ``seeded_noise`` stream): the
states an Euler teacher gives at the schedule's times do not depend on the other schedules or noises, so this
only skips recomputing them. Cases with ``pair_steps`` or ``pair_solver`` run their own teacher.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

import numpy as np
import torch

import boss_fast as bf
from boss_fast._identity import model_fingerprint
from boss_fast.metrics import digits_fd
from boss_fast.models import DIGITS_SHAPE, load_bundled
from boss_fast.straighten import PairTeacher
from boss_fast.straighten.pairs import PILOT_NOISES
from boss_fast.trajectories import TeacherRunner

# the modules (boss_fast.straighten is also the function's name in the package namespace): the pairs' and the
# training's, whose straightening_pairs the run calls
pairs_module = importlib.import_module("boss_fast.straighten.pairs")
train_module = importlib.import_module("boss_fast.straighten.train")

BLOCK = r"blocks\.\d+\."
TARGETS = {
    # 5.0% of the parameters at rank 4 (16,384 of 328,260): the DiT's default before this sweep.
    "attn_mlp": rf".*{BLOCK}(attn\.(qkv|proj)|mlp\.(0|2))",
    # + the blocks' adaLN modulation (time conditioning): 7.2% at rank 4.
    "attn_mlp_ada": rf".*{BLOCK}(attn\.(qkv|proj)|mlp\.(0|2)|adaLN_modulation\.1)",
    # + the final modulation and the head: 7.5% at rank 4.
    "attn_mlp_ada_head": (
        rf".*({BLOCK}(attn\.(qkv|proj)|mlp\.(0|2)|adaLN_modulation\.1)|final\.adaLN_modulation\.1|head)"
    ),
    # the modulation only (blocks, final) and the head: 2.5% at rank 4.
    "ada_head": rf".*({BLOCK}adaLN_modulation\.1|final\.adaLN_modulation\.1|head)",
}
BASE = {"iters": 2000, "batch_size": 64, "warmup": 200, "ema": 0.999, "num_pairs": 5000, "lr": 2e-4}
COARSE = {**BASE, "iters": 600, "warmup": 60}


def _lora(rank: int, lr: float, alpha_per_rank: float = 1.0, targets: str = "attn_mlp") -> dict:
    return {"lora_rank": rank, "lr": lr, "lora_alpha": alpha_per_rank * rank, "lora_targets": targets}


LORA = _lora(4, 3e-3, 1.0, "attn_mlp_ada_head")  # the LoRA default (straighten_sweep_lora.md)
CHEAP = {"pair_solver": "heun", "pair_steps": 12, "pair_spacing": "adaptive"}

# phase -> [(case label, K values, seeds, settings)], run in this order; "lora_targets" names a TARGETS entry.
Case = tuple[str, tuple[int, ...], tuple[int, ...], dict]
PHASES: dict[str, list[Case]] = {
    "smoke": [("r4", (2, 4), (0,), {**COARSE, "iters": 3, "num_pairs": 20, **_lora(4, 3e-3)})],
    # 600 iterations at K = 2 (where LoRA was furthest behind) to rank the LoRA settings.
    "lora-coarse": [
        ("full lr 2e-4", (2,), (0,), {**COARSE}),
        ("r4 lr 1e-3", (2,), (0,), {**COARSE, **_lora(4, 1e-3)}),
        ("r4 lr 3e-3", (2,), (0,), {**COARSE, **_lora(4, 3e-3)}),
        ("r4 lr 1e-2", (2,), (0,), {**COARSE, **_lora(4, 1e-2)}),
        ("r4 lr 1e-3 alpha 4r", (2,), (0,), {**COARSE, **_lora(4, 1e-3, 4.0)}),
        ("r4 lr 3e-3 +adaLN", (2,), (0,), {**COARSE, **_lora(4, 3e-3, 1.0, "attn_mlp_ada")}),
        ("r4 lr 3e-3 +adaLN+head", (2,), (0,), {**COARSE, **_lora(4, 3e-3, 1.0, "attn_mlp_ada_head")}),
        ("r4 lr 3e-3 adaLN+head only", (2,), (0,), {**COARSE, **_lora(4, 3e-3, 1.0, "ada_head")}),
        ("r8 lr 3e-3", (2,), (0,), {**COARSE, **_lora(8, 3e-3)}),
    ],
    # The best coarse LoRA settings at the full 2000 iterations.
    "lora": [
        ("r4 lr 3e-3 +adaLN+head", (2, 4), (0,), {**BASE, **_lora(4, 3e-3, 1.0, "attn_mlp_ada_head")}),
        ("r4 lr 1e-2 +adaLN+head", (2,), (0,), {**BASE, **_lora(4, 1e-2, 1.0, "attn_mlp_ada_head")}),
    ],
    # The full fine-tune (lr 2e-4) against the pairs' cost; the first case is today's 500,000 evaluations.
    "pairs-full": [
        ("5000 noises, Euler 100", (4, 2), (0,), {**BASE}),
        ("1250 noises, Euler 100", (4,), (0,), {**BASE, "num_pairs": 1250}),
        ("2500 noises, Euler 50", (4,), (0,), {**BASE, "num_pairs": 2500, "pair_steps": 50}),
        ("1250 noises, Euler 100", (2,), (0,), {**BASE, "num_pairs": 1250}),
        ("2500 noises, Euler 50", (2,), (0,), {**BASE, "num_pairs": 2500, "pair_steps": 50}),
        ("256 noises, Euler 100", (4, 2), (0,), {**BASE, "num_pairs": 256}),
    ],
    # The LoRA default (rank 4, the DiT's lora_targets, lr 3e-3, alpha 4) on a quarter of the teacher's cost.
    "pairs-lora": [
        (
            "1250 noises, Euler 100",
            (4, 2),
            (0,),
            {**BASE, **_lora(4, 3e-3, 1.0, "attn_mlp_ada_head"), "num_pairs": 1250},
        ),
    ],
    # A quarter of today's teacher: 5000 noises, Heun 12 steps cut where a pilot saw the velocity change
    # (24 evaluations per noise + 32 x 100 for the pilot), against today's pairs, full and LoRA, 3 seeds.
    "pairs-adaptive": [
        ("5000 noises, Euler 100", (2, 4), (0, 2, 3), {**BASE}),
        ("5000 noises, Heun 12 adaptive", (2, 4), (0, 2, 3), {**BASE, **CHEAP}),
        ("LoRA, 5000 noises, Euler 100", (2, 4), (0, 2, 3), {**BASE, **LORA}),
        ("LoRA, 5000 noises, Heun 12 adaptive", (2, 4), (0, 2, 3), {**BASE, **LORA, **CHEAP}),
    ],
    # The full fine-tune's K = 4 against the teacher's FD: the learning rate, on the cheap pairs.
    "full-k4": [
        ("lr 5e-4, Heun 12 adaptive", (4,), (0,), {**BASE, **CHEAP, "lr": 5e-4}),
        ("lr 1e-3, Heun 12 adaptive", (4,), (0,), {**BASE, **CHEAP, "lr": 1e-3}),
    ],
}


def _case_settings(settings: dict) -> bf.StraightenSettings:
    # A case that names no pair teacher has the schedule's own (its solver on its grid), and one that names no
    # inputs the teacher's states, whatever StraightenSettings' defaults: the rows recorded before the cheap
    # pairs and the sampler's inputs became the defaults.
    published = {"pair_steps": None, "pair_solver": None, "pair_spacing": "uniform", "inputs": "teacher"}
    values = {**published, **settings}
    if "lora_targets" in values:
        values["lora_targets"] = TARGETS[values["lora_targets"]]
    return bf.StraightenSettings(**values)


class _PairMemo:
    """``straightening_pairs`` for the schedule's own grid and solver, from one teacher run per (seed, solver)
    over the most noises asked so far; anything else goes to the real function."""

    def __init__(self, real) -> None:
        self.real = real
        self.runs: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # key -> (noise, (M, N + 1, ...))

    def __call__(self, teacher, sched, noise, grid=100, solver=None, **kw):
        if kw.get("pair_teacher") not in (None, PairTeacher()):
            return self.real(teacher, sched, noise, grid, solver, **kw)
        key = (tuple(sched.grid.tolist()), solver or sched.solver, model_fingerprint(teacher))
        stored = self.runs.get(key)
        m = noise.shape[0]
        if stored is None or stored[0].shape[0] < m or not torch.equal(stored[0][:m], noise):
            runner = TeacherRunner(teacher, sched.grid, key[1], None, record="states")
            states = torch.cat([runner(noise[i : i + 500]).states.transpose(0, 1) for i in range(0, m, 500)])
            stored = self.runs[key] = (noise.clone(), states)
        states = stored[1][:m, torch.tensor(sched.indices.tolist())]
        return pairs_module._flatten_pairs(states.contiguous(), sched.times)


def _teacher_evals(settings: bf.StraightenSettings, k: int) -> int:
    """Teacher model evaluations the pairs cost: noises x steps x the solver's stages."""
    stages = {"euler": 1, "heun": 2, "rk4": 4}[getattr(settings, "pair_solver", None) or "euler"]
    steps = getattr(settings, "pair_steps", None) or settings.grid
    pilot = PILOT_NOISES * settings.grid if settings.pair_spacing == "adaptive" else 0
    return settings.num_pairs * steps * stages + pilot


def _done(path: str) -> set[str]:
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        return {json.loads(line)["id"] for line in f if line.strip()}


def _run_phase(phase: str, path: str, only: set[str] | None) -> None:
    model = load_bundled("digits_dit")
    grid = bf.uniform_grid(100)
    noise = bf.seeded_noise(DIGITS_SHAPE, 0, 256, seed=0)
    cost = bf.cost_matrix(model, noise, grid, batch_size=256, progress=False)
    bellman = dict(bf.schedules_from_cost(cost, 4, grid=grid, num_samples=256))
    evaluation = bf.seeded_noise(DIGITS_SHAPE, 0, 1000, seed=1)
    memo = _PairMemo(train_module.straightening_pairs)
    train_module.straightening_pairs = memo
    done = _done(path)
    for label, ks, seeds, settings in PHASES[phase]:
        if only and label not in only:
            continue
        for k in ks:
            for seed in seeds:
                values = {**settings, "seed": seed}
                ident = json.dumps([phase, label, k, values], sort_keys=True)
                if ident in done:
                    continue
                t0 = time.perf_counter()
                student, stats = bf.straighten(
                    model, bellman[k], settings=_case_settings(values), progress=False, return_stats=True
                )
                wall = time.perf_counter() - t0
                with torch.no_grad():
                    fd = digits_fd(bf.sample(student, evaluation, bellman[k]))
                row = {
                    "id": ident, "phase": phase, "case": label, "k": k, "seed": seed, "settings": values,
                    "fd": fd, "trained": stats.trained_params, "total": stats.total_params,
                    "teacher_evals": _teacher_evals(_case_settings(values), k), "wall_s": round(wall, 1),
                }  # fmt: skip
                with open(path, "a") as f:  # one line per run, flushed: a cut sweep keeps what it measured
                    f.write(json.dumps(row) + "\n")
                print(f"{phase} | {label} | K={k} seed={seed}: FD {fd:.2f} ({wall:.0f} s)", flush=True)


def _report(path: str, phases: list[str], out: str, command: str) -> None:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    script = "PYTHONPATH=. python benchmarks/straighten_sweep.py"
    runs = "\n".join(f"    {script} --phase {ph} --jsonl {path}" for ph in phases)
    lines = [
        "# Straightening sweep on the bundled digits DiT (CPU)\n",
        f"Commands (each run appends to {path}; a rerun skips what is there), then this table:\n",
        f"{runs}\n    PYTHONPATH=. {command}\n",
        "FD (`digits_fd`) on 1000 held-out noises (seed 1), Bellman schedule (256 noises, grid 100); batch"
        " 64, EMA 0.999 with warm-up, warm-up 10% of the iterations, pairs from `seed`. Trained: parameters"
        " the run trained (share of the 328,260). Teacher evaluations: noises x steps x the solver's stages"
        " (+ 32 x 100 for the adaptive spacing's pilot)."
        " Wall time on 2 CPU cores shared with other jobs (one torch thread): an upper bound, not a speed;"
        " the first run of each process also made the pairs. The LoRA default at 5000 noises: the lora"
        " phase (straighten_sweep_lora.md).",
    ]
    for phase in phases:
        group: dict[tuple[str, int], list[dict]] = {}
        for row in rows:
            if row["phase"] == phase:
                group.setdefault((row["case"], row["k"]), []).append(row)
        lines += [
            f"\n## {phase}\n",
            "| case | K | FD (per seed) | mean | trained | teacher evaluations | iterations | wall s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for (case, k), runs in group.items():
            fds = [r["fd"] for r in sorted(runs, key=lambda r: r["seed"])]
            r = runs[0]
            lines.append(
                f"| {case} | {k} | {' / '.join(f'{v:.2f}' for v in fds)} | {np.mean(fds):.2f} | "
                f"{r['trained']:,} ({100 * r['trained'] / r['total']:.1f}%) | {r['teacher_evals']:,} | "
                f"{r['settings']['iters']} | {np.mean([x['wall_s'] for x in runs]):.0f} |"
            )
    text = "\n".join(lines) + "\n"
    bf._validation.atomic_write(out, lambda f: f.write(text.encode()))
    print(text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase", choices=sorted(PHASES))
    p.add_argument("--cases", default="", help="case labels separated by '|' (default: every case)")
    p.add_argument("--jsonl", default="benchmarks/results/straighten_sweep.jsonl")
    p.add_argument("--report", action="store_true", help="write --md from --jsonl instead of running")
    p.add_argument("--phases", default="", help="the phases --report tabulates")
    p.add_argument("--md", default="")
    args = p.parse_args(argv)
    if args.report:
        _report(args.jsonl, args.phases.split(","), args.md, "python " + " ".join(sys.argv))
        return
    torch.set_num_threads(1)  # on 2 cores shared with other jobs, one thread ran a step ~15x faster than 2
    _run_phase(args.phase, args.jsonl, set(args.cases.split("|")) - {""} or None)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
