"""What training from the sampler's own states costs: straightening steps per second, inputs "teacher" against
"sampler", on the bundled digits DiT at K = 2 and 4 (the default search's schedules), the same pairs (cached,
so only the training and the pilot are timed), alternating runs in one process, torch on one thread.

    PYTHONPATH=. python benchmarks/straighten_inputs_time.py
Writes benchmarks/results/straighten_inputs_time.md.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import torch

import boss_fast as bf
from boss_fast._validation import atomic_write
from boss_fast.models import DIGITS_SHAPE, load_bundled

OUT = "benchmarks/results/straighten_inputs_time.md"
ITERS, ROUNDS = 300, 3


def main() -> None:
    torch.set_num_threads(1)
    model = load_bundled("digits_dit")
    sset = bf.optimal_schedules(model, DIGITS_SHAPE, 4, bf.SearchSettings(num_samples=256, seed=0))
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for k in (2, 4):
            seconds: dict[str, list[float]] = {"teacher": [], "sampler": []}
            for r in range(ROUNDS + 1):  # round 0 fills the pair cache and warms up; not counted
                for inputs in ("teacher", "sampler"):
                    settings = bf.StraightenSettings(num_pairs=1000, iters=ITERS, inputs=inputs)
                    t0 = time.perf_counter()
                    bf.straighten(model, sset[k], settings=settings, cache_dir=cache, progress=False)
                    if r:
                        seconds[inputs].append(time.perf_counter() - t0)
            t, s = statistics.median(seconds["teacher"]), statistics.median(seconds["sampler"])
            rows.append(f"| {k} | {t:.1f} | {s:.1f} | {s / t:.2f} | {(k - 1) / 2:.1f} |")
    text = (
        "# Training from the sampler's own states: what it costs\n\n"
        f"Command: `PYTHONPATH=. python {' '.join(sys.argv)}`\n\n"
        f"One straightening run of {ITERS} iterations (batch 64, 1000 cached pair noises: the teacher is not "
        "timed, the pilot is), the digits DiT, the default search's K-step schedule, torch on 1 thread of a "
        f"2-core CPU; median of {ROUNDS} rounds, the two inputs alternating.\n\n"
        "| K | inputs teacher (s) | inputs sampler (s) | ratio | extra passes per pair (no gradient) |\n"
        "|---|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n"
    )
    atomic_write(OUT, lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
