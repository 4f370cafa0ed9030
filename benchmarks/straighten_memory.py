"""Peak memory of straightening a latent-sized DiT on the CPU: the code before issue 22 against today's.

The model: the latent DiT of ``benchmarks/test_bench_sampler.py`` at DiT-S's full depth (4x32x32 latents,
patch 2, hidden 384, 6 heads, 12 blocks: 33M parameters, 133 MB in float32), random weights. One run per case,
each in a fresh Python process: 8 pair noises on a 5-point grid, K = 2, then one Adam step at batch 8 (the
optimiser's state exists from the first step on, so one step reaches the peak), full fine-tuning or LoRA
rank 8. Reported per case: the process's resident set after building the model
(``VmRSS``) and its peak over the whole run (``VmHWM`` from /proc/self/status), both in MiB, and the peak
minus the resident set (what straightening added); every process runs with ``MALLOC_MMAP_THRESHOLD_`` =
1 MiB (see ``MMAP_THRESHOLD``).

Cases: "before" runs the code as it was (a deep copy for the student and another for the frozen teacher),
from a checkout of that commit given by ``--before``; the others run this checkout: the default (one copy,
the pairs' teacher is the student before training), ``in_place`` (no copy), then gradient checkpointing, then
bf16 autocast (``StraightenMemory``).

    git worktree add /tmp/boss-before 95fc4ac && cp boss_fast/_C*.so /tmp/boss-before/boss_fast/
    PYTHONPATH=. python benchmarks/straighten_memory.py --before /tmp/boss-before --out benchmarks/results

writes ``straighten_memory.json`` and ``straighten_memory.md`` there.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys

import numpy as np
import torch

import boss_fast as bf
from boss_fast._validation import atomic_write
from boss_fast.models.dit import DiT

# name -> (code: "before" or "after", StraightenMemory fields)
CASES = {
    "before": ("before", None),
    "default": ("after", {}),
    "in_place": ("after", {"in_place": True}),
    "in_place + checkpointing": ("after", {"in_place": True, "gradient_checkpointing": True}),
    "in_place + checkpointing + bf16": (
        "after",
        {"in_place": True, "gradient_checkpointing": True, "autocast": "bfloat16"},
    ),
    # The rows above train from the sampler's own states (the default since the "inputs" setting); these
    # two from the teacher's, as every row did before.
    "default, teacher inputs": ("after", {"inputs": "teacher"}),
    "in_place + checkpointing, teacher inputs": (
        "after",
        {"in_place": True, "gradient_checkpointing": True, "inputs": "teacher"},
    ),
}
LORA_RANKS = {"full": None, "LoRA r=8": 8}
# glibc raises its mmap threshold after each free of a large block (up to 32 MiB), so later tensors come
# from the heap and freed ones stay resident: the peak then depends on the order of allocations (one run of
# these cases without it put LoRA 106 MiB above "before" and full LoRA above full fine-tuning). A fixed
# threshold of 1 MiB maps every tensor above it and unmaps it on free: the peak follows the live tensors.
MMAP_THRESHOLD = 1 << 20


def _status(field: str) -> float:
    """A /proc/self/status memory field in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(case: str, lora: str) -> dict:
    """One straightening run in this process; its memory figures."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    net = DiT(input_size=32, patch_size=2, in_channels=4, hidden=384, depth=12, heads=6)
    for p in net.parameters():  # adaLN-Zero starts at 0: random weights so every op does work
        torch.nn.init.normal_(p, std=0.02)
    grid = bf.uniform_grid(4)
    sched = bf.Schedule(grid[[0, 2, 4]], np.array([0, 2, 4]), 0.0, grid, shape=(4, 32, 32))
    kwargs = dict(num_pairs=8, grid=4, iters=1, batch_size=8, warmup=0, lora_rank=LORA_RANKS[lora])
    fields = CASES[case][1]
    if fields is not None:  # the "before" code has no StraightenMemory
        fields = dict(fields)
        if "inputs" in fields:  # a setting of the run, not of its memory
            kwargs["inputs"] = fields.pop("inputs")
        if "autocast" in fields:
            fields["autocast"] = getattr(torch, fields["autocast"])
        memory = importlib.import_module(
            "boss_fast.straighten"
        ).StraightenMemory  # the module, not the function
        kwargs["memory"] = memory(**fields)
    base = _status("VmRSS")
    if CASES[case][0] == "before":  # that code's keywords
        bf.straighten(net, sched, **kwargs, progress=False)
    else:
        bf.straighten(net, sched, settings=bf.StraightenSettings(**kwargs), progress=False)
    return {
        "params": sum(p.numel() for p in net.parameters()),
        "base_mib": base,
        "peak_mib": _status("VmHWM"),
    }


def run(before: str | None) -> list[dict]:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = []
    for case, (code, _) in CASES.items():
        if code == "before" and before is None:
            continue
        root = before if code == "before" else here
        for lora in LORA_RANKS:
            env = {**os.environ, "PYTHONPATH": root, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", case, lora],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            row = {"case": case, "training": lora, **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(row, flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    params = rows[0]["params"]
    lines = [
        "# Peak memory of straightening a latent DiT on the CPU (benchmarks/straighten_memory.py)",
        "",
        f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), torch {torch.__version__}. "
        f"DiT-S sized: {params / 1e6:.1f}M parameters ({params * 4 / 2**20:.0f} MiB in float32); 8 pair "
        "noises, 5-point grid, K = 2, one Adam step at batch 8. One fresh process per row, "
        "MALLOC_MMAP_THRESHOLD_ = 1 MiB; MiB.",
        "",
        "    git worktree add /tmp/boss-before 95fc4ac && cp boss_fast/_C*.so /tmp/boss-before/boss_fast/",
        "    PYTHONPATH=. python benchmarks/straighten_memory.py --before /tmp/boss-before \\",
        "        --out benchmarks/results",
        "",
        "| case | training | RSS with the model | peak RSS | peak - model | vs before |",
        "|---|---|---|---|---|---|",
    ]
    before = {r["training"]: r["peak_mib"] - r["base_mib"] for r in rows if r["case"] == "before"}
    for r in rows:
        added = r["peak_mib"] - r["base_mib"]
        ratio = f"{added / before[r['training']]:.2f}x" if r["training"] in before else "-"
        lines.append(
            f"| {r['case']} | {r['training']} | {r['base_mib']:.0f} | {r['peak_mib']:.0f} | {added:.0f} | "
            f"{ratio} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="a checkout of the code before (for the 'before' rows)")
    parser.add_argument("--out", default=None, help="folder for straighten_memory.{json,md}")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "TRAINING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    rows = run(args.before)
    text = markdown(rows)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        raw = json.dumps({"rows": rows, "torch": torch.__version__, "cpus": os.cpu_count()}, indent=1)
        atomic_write(os.path.join(args.out, "straighten_memory.json"), lambda f: f.write(raw.encode()))
        atomic_write(os.path.join(args.out, "straighten_memory.md"), lambda f: f.write(text.encode()))


if __name__ == "__main__":
    main()
