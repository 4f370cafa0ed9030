"""The bill before the work (``boss_fast.search_bill``, ``boss-fast schedule --dry-run``) against the work.

Two checks:

- time: the projected wall time of ``boss-fast schedule --model digits_dit --max-steps 10`` (the CLI's
  defaults: 256 noises, global objective, coarse DP, the start polish, Heun teacher, batch_size 256, grid 100)
  against the search it describes, 3 rounds, each: the dry run's process (its printed projection), then the
  search's process (its wall time, start-up included), then in this process the bill and the same search
  through the Python API with every model call timed (how much of the wall time the calls are) and its rows
  counted (against the bill's evaluations, an upper bound for this route). The load average is recorded
  beside each round (a shared 2-core machine). Written to the json's section "time_default" (the sections
  "time" and "time_one_call" hold an earlier version's rounds: 64 noises, the full DP).
- memory: the bill's memory lines for the cases of ``benchmarks/search_memory.py`` (law and target) beside
  the peaks that benchmark measured (``benchmarks/results/search_memory.json``, RssAnon growth on CPU: the
  device and host lines together; the disk store's file is page cache, not counted there).

Run:
    python -m benchmarks.search_bill time
    python -m benchmarks.search_bill memory
Results: benchmarks/results/search_bill.json (each mode its own section); the figures are copied into
benchmarks/results/search_bill.md beside the commands.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time

import torch

import boss_fast as bf
from benchmarks.search_memory import RESULTS as MEMORY_RESULTS
from benchmarks.search_memory import latent_dit, save
from boss_fast.models import load_bundled

RESULTS = os.path.join(os.path.dirname(__file__), "results", "search_bill.json")
CLI = [sys.executable, "-m", "boss_fast.cli", "schedule", "--model", "digits_dit", "--max-steps", "10",
       "--no-progress"]  # fmt: skip
SETTINGS = bf.SearchSettings()  # what the CLI line above builds


class Timed(torch.nn.Module):
    """The model with every call timed (seconds summed)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.seconds, self.calls, self.rows, self.by_width = model, 0.0, 0, 0, {}

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.model(x, t)
        took = time.perf_counter() - start
        self.seconds += took
        self.calls += 1
        self.rows += x.shape[0]
        self.by_width.setdefault(x.shape[0], []).append(took)
        return out


def _cli(extra: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run([*CLI, *extra], check=True, capture_output=True, text=True)
    return time.perf_counter() - start, out.stdout


def time_round() -> dict:
    """One round: the dry run's and the search's processes, then the bill and the timed search in-process."""
    load = os.getloadavg()[0]
    dry_wall, text = _cli(["--dry-run"])
    found = re.search(r"projected wall time: (?:at most )?([\d,.]+) s", text)
    projected = float(found.group(1).replace(",", ""))
    with tempfile.TemporaryDirectory() as tmp:
        search_wall, _ = _cli(["--out", os.path.join(tmp, "s.json")])
    model = Timed(load_bundled("digits_dit"))
    bill = bf.search_bill(model.model, (1, 8, 8), 10, SETTINGS)
    start = time.perf_counter()
    bf.optimal_schedules(model, (1, 8, 8), 10, SETTINGS)
    api_wall = time.perf_counter() - start
    return {"load_before": load, "load_after": os.getloadavg()[0], "cli_dry_run_s": dry_wall,
            "cli_projected_s": projected, "cli_search_s": search_wall, "api_projected_s": bill.seconds,
            "api_call_s": bill.call_seconds, "api_search_s": api_wall, "api_model_calls_s": model.seconds,
            "api_model_calls": model.calls, "bill_calls": sum(n for _, n in bill.calls),
            "api_rows": model.rows, "bill_evaluations": bill.evaluations,
            "api_by_width": {w: [len(v), sum(v)] for w, v in sorted(model.by_width.items())}}  # fmt: skip


def memory_rows() -> list[dict]:
    """The bill's memory (device + host + work on CPU) beside the measured RssAnon growth of each case."""
    with open(MEMORY_RESULTS) as f:
        measured = json.load(f)
    rows = []
    for case in measured["law"] + measured["target"]:
        c, s = case["shape"][0], case["shape"][1]
        settings = bf.SearchSettings(grid=case["N"], num_samples=case["M"], batch_size=case["batch"],
                                     objective=case["objective"], store=case["store"],
                                     dp="full", polish="none")  # fmt: skip  # the law's route
        bill = bf.search_bill(latent_dit(c, s), tuple(case["shape"]), case["K"], settings)
        mib = (bill.memory.device + bill.memory.host + bill.work) / 2**20
        rows.append({**case, "bill_mb": mib, "bill_rows_mb": (bill.memory.device + bill.memory.host) / 2**20,
                     "bill_vs_measured": mib / case["rss_anon_growth_mb"] - 1.0})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str]) -> None:
    mode = argv[0] if argv else "time"
    torch.set_num_threads(1)
    if mode == "time":
        rounds = []
        for _ in range(3):
            rounds.append(time_round())
            print(json.dumps(rounds[-1]), flush=True)
        save("time_default", {"command": " ".join(CLI[1:]), "rounds": rounds}, RESULTS)
    else:
        save("memory", memory_rows(), RESULTS)


if __name__ == "__main__":
    main(sys.argv[1:])
