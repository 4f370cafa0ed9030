"""Write tests/data/pre_header/: one small file of every format boss_fast writes, by the code as it was BEFORE
the common header (boss_fast._header) and the identity module (boss_fast._identity) existed (commit 42eea9c).

tests/test_header.py reads them with the current code: a file any earlier version wrote must keep loading.
Regenerate only from that commit (never from the current code, which would test nothing):

    git worktree add /tmp/pre 42eea9c && PYTHONPATH=/tmp/pre python tests/data/make_pre_header_files.py
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys

import numpy as np
import torch

import boss_fast as bf
from boss_fast.demo import cached_reference
from boss_fast.engine import Checkpoint
from boss_fast.models import MLPVelocity, load_bundled

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pre_header")
GRID = [0.0, 0.25, 0.5, 0.75, 1.0]
RUN = {"noise": "sha256:0011223344556677", "sample_shape": "(2,)", "dtype": "torch.float64", "model": "key:x"}


def teacher() -> MLPVelocity:
    """A tiny velocity whose every weight is set by a formula (no RNG): the same module in any process."""
    net = MLPVelocity(hidden=8, depth=1, n_freqs=2).double()
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.copy_(torch.cos(torch.arange(p.numel(), dtype=torch.float64) * 0.7 + i).reshape(p.shape) / 3)
    return net


def schedules() -> bf.Schedule:
    n = len(GRID)
    cost = np.array(
        [[abs(j - i) ** 1.5 * (1 + 0.1 * i) if j > i else 0.0 for j in range(n)] for i in range(n)]
    )
    fingerprint = bf.model_fingerprint(teacher())
    sched = bf.schedule_from_cost(cost, GRID, 2, num_samples=8, fingerprint=fingerprint, shape=(2,))
    sched.save(os.path.join(OUT, "schedule.json"))
    bf.ScheduleSet(bf.schedules_from_cost(cost, GRID, 3, num_samples=8, shape=(2,)), cost_table=cost).save(
        os.path.join(OUT, "schedule_set.json")
    )
    return sched


def main() -> None:
    if "boss_fast._header" in sys.modules or importlib.util.find_spec("boss_fast._header") is not None:
        raise SystemExit("run this with the pre-header code on PYTHONPATH (see the docstring)")
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    sched = schedules()
    for name, fmt, version in (
        ("cost.npz", "boss_fast.cost_checkpoint", 2),
        ("own_state.npz", "boss_fast.own_state_checkpoint", 1),
    ):
        Checkpoint.open(os.path.join(OUT, name), fmt, version, RUN, name).save(sums=np.arange(3.0), count=7)
    noise = bf.seeded_noise((2,), 0, 8, seed=3, dtype=torch.float64)
    student = bf.straighten(
        teacher(), sched, teacher(), num_pairs=8, grid=sched.grid, iters=4, batch_size=4, warmup=1,
        checkpoint_dir=os.path.join(OUT, "straighten"), device="cpu", progress=False, noise=noise,
        checkpoint_every=2, pair_batch_size=4, cache_dir=os.path.join(OUT, "pairs"),
    )  # fmt: skip
    flow = load_bundled("gmm2d")
    ref, _ = cached_reference(flow, noise, os.path.join(OUT, "reference.safetensors"), fingerprint="gmm2d")
    expected = {
        "student": {k: v.tolist() for k, v in student.state_dict().items()},
        "reference": ref.tolist(),
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)


if __name__ == "__main__":
    main()
