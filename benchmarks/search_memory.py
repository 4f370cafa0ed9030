"""Peak memory of the schedule search by store and objective, and the search's time against its floor.

Each case runs in a fresh subprocess on CPU (so its peak is its own) on a random-weight latent DiT (the
construction of benchmarks/test_bench_sampler.py at hidden 64, depth 2, patch 2): a thread samples
``RssAnon`` (anonymous resident memory: not the page cache a memory-mapped store fills) from
/proc/self/status every 2 ms; the figure is the peak minus the value before the search (model built,
nothing run). On CPU the search device and the host are the same memory, so the growth is device + host
anonymous memory together; the law (docs/search_memory.md) says which part lives where.

Run:
    python -m benchmarks.search_memory law      # 3 sizes x (3 stores, global) + 3 sizes (local)
    python -m benchmarks.search_memory target   # 16x32x32, M = 64, N = 100, K = 10, batch 8: disk vs device
    python -m benchmarks.search_memory floor    # search time vs the same model calls as plain forward passes
Results: benchmarks/results/search_memory.json and .md (each mode writes its own section of the json).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import torch

from boss_fast.models.dit import DiT
from boss_fast.search import SearchSettings, optimal_schedules, search_memory

RESULTS = os.path.join(os.path.dirname(__file__), "results", "search_memory.json")


def latent_dit(channels: int, size: int) -> DiT:
    torch.manual_seed(0)
    net = DiT(input_size=size, patch_size=2, in_channels=channels, hidden=64, depth=2, heads=4)
    for p in net.parameters():  # adaLN-Zero starts at zero; random weights make every op do work
        torch.nn.init.normal_(p, std=0.02)
    return net.eval().requires_grad_(False)


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


class PeakSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.stop = rss_anon(), threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_anon())
            time.sleep(0.002)


def run_case(case: dict) -> dict:
    """One search in this process; returns the case with its measured RssAnon growth and wall time."""
    torch.set_num_threads(1)  # a shared 2-core machine: no spinning threads
    c, s = case["shape"][0], case["shape"][1]
    model = latent_dit(c, s)
    base = rss_anon()
    sampler = PeakSampler()
    sampler.start()
    start = time.perf_counter()
    # store "before": a boss_fast without the engine's store (run this file from such a checkout)
    store = {} if case["store"] == "before" else {"store": case["store"]}
    # the law is the full DP's: since the default became the coarse route with the polish, say so
    route = {"dp": "full", "polish": "none"} if case["objective"] == "global" else {}
    settings = SearchSettings(grid=case["N"], num_samples=case["M"], batch_size=case["batch"],
                              objective=case["objective"], **store, **route)  # fmt: skip
    optimal_schedules(model, tuple(case["shape"]), case["K"], settings)
    seconds = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    sampler.peak = max(sampler.peak, rss_anon())
    return {**case, "rss_anon_growth_mb": (sampler.peak - base) / 2**20, "seconds": seconds}


def in_subprocess(case: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.search_memory", "case", json.dumps(case)],
                         check=True, capture_output=True, text=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def law_cases() -> list[dict]:
    cases = []
    for shape in ([16, 8, 8], [16, 16, 16], [16, 32, 32]):
        base = {"shape": shape, "M": 16, "N": 50, "K": 2, "batch": 4}
        cases += [{**base, "objective": "global", "store": st} for st in ("device", "host", "disk")]
        cases.append({**base, "objective": "local", "store": "device"})
    return cases


def target_cases() -> list[dict]:
    base = {"shape": [16, 32, 32], "M": 64, "N": 100, "K": 10, "batch": 8, "objective": "global"}
    return [{**base, "store": "disk"}, {**base, "store": "device"}]


def predicted_mb(case: dict) -> float:
    """The law (``boss_fast.search.search_memory``, docs/search_memory.md) without its constant, on CPU:
    device and host memory are one (the disk store's file is page cache, not anonymous memory)."""
    d = 1
    for n in case["shape"]:
        d *= n
    mem = search_memory(case["objective"], case["store"], case["N"] + 1, case["M"], case["batch"], d, 4)
    return (mem.device + mem.host) / 2**20


class Counted(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.widths = model, []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.widths.append(x.shape[0])
        return self.model(x, t)


def floor_case() -> dict:
    """Search time vs the same model calls (same widths, same order) as plain forward passes, on the latent
    DiT of benchmarks/test_bench_sampler.py (hidden 384, depth 4) at 4x16x16, where the model dominates as it
    does on a real transformer."""
    torch.manual_seed(0)
    net = DiT(input_size=16, patch_size=2, in_channels=4, hidden=384, depth=4, heads=6)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.02)
    model = Counted(net.eval().requires_grad_(False))
    shape, settings = (
        (4, 16, 16),
        SearchSettings(grid=30, num_samples=8, batch_size=8, dp="full", polish="none"),
    )
    optimal_schedules(model, shape, 3, settings)  # warm-up, and the calls' widths in order
    widths, out = list(model.widths), {}
    x, t = torch.randn(max(widths), *shape), torch.rand(max(widths))
    for rnd in range(2):
        start = time.perf_counter()
        optimal_schedules(model.model, shape, 3, settings)
        search = time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            for w in widths:
                model.model(x[:w], t[:w])
        floor = time.perf_counter() - start
        out[f"round{rnd}"] = {"search_s": search, "floor_s": floor, "ratio": search / floor}
    config = {"shape": shape, "K": 3, "grid": 30, "num_samples": 8, "batch_size": 8}
    return {"config": config, "calls": len(widths), "rows": sum(widths), "rounds": out}


def save(section: str, value: object, path: str = RESULTS) -> None:
    """Rewrite one section of the results json at ``path`` (atomically)."""
    data = {}
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
    data[section] = value
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def main(argv: list[str]) -> None:
    mode = argv[0] if argv else "law"
    torch.set_num_threads(1)
    if mode == "case":
        print(json.dumps(run_case(json.loads(argv[1]))))
        return
    if mode == "floor":
        result = floor_case()
        print(json.dumps(result, indent=1))
        save("floor", result)
        return
    cases = {"law": law_cases, "target": target_cases}[mode]()
    rows = []
    for case in cases:
        got = in_subprocess(case)
        got["predicted_rows_mb"] = predicted_mb(case)
        rows.append(got)
        print(json.dumps(got), flush=True)
    save(mode, rows)


if __name__ == "__main__":
    main(sys.argv[1:])
