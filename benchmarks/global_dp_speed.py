"""Search time of the demo's digits global search (every K <= 10), ``dp="coarse"`` against ``dp="full"`` at
today's settings (grid 100, 128 noises, Heun teacher, batch_size 256), side by side: the two run alternately
``--repeats`` times in one process, so that a shared machine's load falls on both alike; the report gives
each run's wall time, the medians and the ratio of the medians. The schedules' held-out RMSE is in
``global_dp_cost.md`` (same searches, same noises).

    PYTHONPATH=. python benchmarks/global_dp_speed.py --repeats 3

writes ``global_dp_speed.json`` and ``.md`` in ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

import boss_fast as bf
from boss_fast._validation import atomic_write
from boss_fast.demo import DEMO_MODELS
from boss_fast.models import load_bundled
from boss_fast.refine import CoarseToFine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = DEMO_MODELS["digits_dit"]
    model = load_bundled("digits_dit").eval()
    seconds: dict[str, list[float]] = {"full": [], "coarse": []}
    for _ in range(args.repeats):
        for dp in seconds:
            start = time.perf_counter()
            bf.optimal_schedules(
                model, spec.shape, 10, bf.SearchSettings(grid=100, num_samples=spec.num_samples, dp=dp)
            )
            seconds[dp].append(time.perf_counter() - start)
            print(f"{dp}: {seconds[dp][-1]:.1f} s", flush=True)
    med = {dp: statistics.median(s) for dp, s in seconds.items()}
    setup = {"model": "digits_dit", "grid": 100, "num_samples": spec.num_samples, "max_steps": 10,
             "batch_size": 256, "threads": args.threads, "coarse": repr(CoarseToFine()),
             "machine": platform.machine(), "torch": torch.__version__}  # fmt: skip
    command = (
        f"PYTHONPATH=. python benchmarks/global_dp_speed.py --repeats {args.repeats} --threads {args.threads}"
    )
    doc = {"setup": setup, "command": command, "seconds": seconds, "median": med,
           "speedup": med["full"] / med["coarse"]}  # fmt: skip
    text = "\n".join([
        "# Digits global search, every K <= 10: dp='coarse' against dp='full', side by side",
        "",
        f"Command: `{command}`",
        "",
        f"Setup: {json.dumps(setup)}",
        "",
        "| DP | runs (s) | median (s) |",
        "|---|---|---:|",
        *[f"| {dp} | {', '.join(f'{x:.1f}' for x in s)} | {med[dp]:.1f} |" for dp, s in seconds.items()],
        "",
        f"Speed-up of the medians: {doc['speedup']:.2f}x. The machine (2 cores) was shared with other jobs "
        "while this ran: the runs alternate so that both see the same load, and the ratio is the figure.",
        "",
    ])  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    atomic_write(os.path.join(args.out, "global_dp_speed.json"), lambda f: f.write(json.dumps(doc).encode()))
    atomic_write(os.path.join(args.out, "global_dp_speed.md"), lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
