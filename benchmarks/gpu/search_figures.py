"""The global schedule search on a latent-sized random DiT: peak device memory, call widths, time vs floor.

    python benchmarks/gpu/search_figures.py --out search.json --markdown search.md          # on the GPU
    python benchmarks/gpu/search_figures.py --out search.json --markdown search.md --quick  # tiny, any device

Model: ``DiT(input_size=32, patch_size=2, in_channels=16, hidden=384, depth=4, heads=6)`` with random weights
(std 0.02, so every op does work), float32: a 16x32x32 latent (the size issue 20's targets name). Search:
``optimal_schedules(objective="global")``, M = 64 noises, grid ``uniform_grid(100)``, every K <= 10,
batch_size 256 (calls of M = 64 samples without wide calls, up to 256 with them). For each store the installed
``boss_fast.SearchSettings`` accepts (its ``store`` field, detected; "device", "host", "disk" are tried, the
ones it lacks or refuses are recorded with the reason):

- ``peak_device_bytes``: ``torch.cuda.max_memory_allocated`` during the search, above what was allocated
  before (the weights); None without CUDA;
- ``calls``, ``samples``, ``widths``: the model calls the search made and how many samples each carried;
- ``seconds`` and ``floor_seconds``: the search's wall time, and the same calls (same widths, same count) as
  plain forward passes of the model: the fastest of 5 timed calls per width, times the number of calls of
  that width. ``seconds / floor_seconds`` is the search's overhead over its model evaluations;
- ``indices``: the schedule of every K (the same for every store, or ``same_schedules`` says otherwise).

One untimed search of 2 noises runs first (Numba's compile of the DP, cuBLAS start-up).

Writes ``--out`` (JSON) and ``--markdown`` (a table), each through a temporary name.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

import boss_fast as bf
from boss_fast.models.dit import DiT

STORES = ("device", "host", "disk")
FULL = {"size": 32, "channels": 16, "hidden": 384, "depth": 4, "heads": 6, "samples": 64, "grid": 100,
        "steps": 10, "batch_size": 256}  # fmt: skip
QUICK = {"size": 8, "channels": 4, "hidden": 32, "depth": 1, "heads": 2, "samples": 4, "grid": 10,
         "steps": 3, "batch_size": 8}  # fmt: skip


def latent_dit(cfg: dict, device: str) -> DiT:
    """A random-weight DiT of ``cfg``'s size on ``device`` (patch 2), in eval mode without gradients."""
    torch.manual_seed(0)
    net = DiT(cfg["size"], 2, cfg["channels"], cfg["hidden"], cfg["depth"], cfg["heads"])
    for p in net.parameters():  # adaLN-Zero starts the modulations and the head at zero
        torch.nn.init.normal_(p, std=0.02)
    return net.to(device).eval().requires_grad_(False)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def counted(net: torch.nn.Module, widths: list[int]) -> Callable:
    """``velocity(x, t)`` = ``net(x, t)``, appending each call's batch width to ``widths``."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        widths.append(int(x.shape[0]))
        return net(x, t)

    return velocity


def floor_seconds(
    net: Callable, widths: list[int], device: str, reps: int = 5, *, shape=None, dtype=torch.float32
) -> float:
    """The same calls as plain forward passes: per width, the fastest of ``reps`` timed calls (after one
    warm-up) times its number of calls; states of ``shape`` (default ``net.sample_shape``) in ``dtype``."""
    total = 0.0
    shape = net.sample_shape if shape is None else shape
    with torch.no_grad():
        for width, count in Counter(widths).items():
            x = torch.randn(width, *shape, device=device, dtype=dtype)
            t = torch.rand(width, device=device, dtype=dtype)
            net(x, t)
            times = []
            for _ in range(reps):
                _sync(device)
                start = time.perf_counter()
                net(x, t)
                _sync(device)
                times.append(time.perf_counter() - start)
            total += min(times) * count
    return total


def available_stores() -> tuple[list[str], dict[str, str]]:
    """The stores to try, and {store: why not} for those this boss_fast does not offer."""
    if "store" not in {f.name for f in dataclasses.fields(bf.SearchSettings)}:
        return [None], {s: "boss_fast.SearchSettings has no store field" for s in STORES}
    return list(STORES), {}


def search_once(net: DiT, cfg: dict, device: str, store: str | None) -> dict:
    """One global search with ``store`` (None: the default); its figures."""
    widths: list[int] = []
    kwargs = {} if store is None else {"store": store}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if device == "cuda" else 0
    start = time.perf_counter()
    settings = bf.SearchSettings(grid=cfg["grid"], num_samples=cfg["samples"], batch_size=cfg["batch_size"],
                                 objective="global", **kwargs)  # fmt: skip
    sset = bf.optimal_schedules(counted(net, widths), net.sample_shape, cfg["steps"], settings, device=device)
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - before if device == "cuda" else None
    floor = floor_seconds(net, widths, device)
    return {
        "store": store or "default",
        "seconds": seconds,
        "floor_seconds": floor,
        "over_floor": seconds / floor if floor > 0 else None,
        "peak_device_bytes": peak,
        "host_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "calls": len(widths),
        "samples": sum(widths),
        "mean_width": sum(widths) / max(len(widths), 1),
        "widths": dict(sorted(Counter(widths).items())),
        "indices": {k: s.indices.tolist() for k, s in sset.items()},
    }


def environment(device: str) -> dict:
    """Device name and versions, to travel with the figures."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (no CUDA device)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "boss_fast": getattr(bf, "__version__", None),
    }


def markdown(doc: dict) -> str:
    """A table of ``doc``'s runs, with the size and the stores that were not available."""
    cfg = doc["config"]
    d = cfg["channels"] * cfg["size"] ** 2
    lines = [
        f"# Global search on a random latent DiT ({doc['env']['device']})",
        "",
        f"{cfg['channels']}x{cfg['size']}x{cfg['size']} (D = {d}), hidden {cfg['hidden']},"
        f" depth {cfg['depth']};"
        f" M = {cfg['samples']}, N = {cfg['grid']}, K <= {cfg['steps']}, batch_size {cfg['batch_size']};"
        f" block M (N + 1) D x 4 = {cfg['samples'] * (cfg['grid'] + 1) * d * 4 / 2**20:.1f} MiB."
        f" torch {doc['env']['torch']}, triton {doc['env']['triton']}{' (quick)' if doc['quick'] else ''}",
        "",
        "| store | s | floor s | x floor | peak device MiB | calls | mean width |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        peak = "n/a" if r["peak_device_bytes"] is None else f"{r['peak_device_bytes'] / 2**20:.1f}"
        ratio = "n/a" if r["over_floor"] is None else f"{r['over_floor']:.2f}"
        lines.append(
            f"| {r['store']} | {r['seconds']:.2f} | {r['floor_seconds']:.2f} | {ratio} | {peak} |"
            f" {r['calls']} | {r['mean_width']:.1f} |"
        )
    lines += ["", f"same schedules for every store: {doc['same_schedules']}"]
    lines += [f"- {store}: not measured ({why})" for store, why in doc["unavailable"].items()]
    return "\n".join(lines) + "\n"


def _write(path: str, text: str) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--markdown", help="markdown table to write")
    parser.add_argument("--quick", action="store_true", help="a tiny model and search (the CPU stand-in)")
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = latent_dit(cfg, device)
    stores, unavailable = available_stores()
    # Warm-up: the DP's Numba compile, cuBLAS handles and the allocator stay out of the first store's time.
    search_once(net, {**cfg, "samples": 2, "batch_size": 2}, device, None)
    runs: list[dict] = []
    for store in stores:
        try:
            runs.append(search_once(net, cfg, device, store))
        except (TypeError, ValueError, NotImplementedError) as err:  # a store this build refuses
            unavailable[store] = f"{type(err).__name__}: {err}"
        text = save(args, cfg, device, runs, unavailable)  # after each store: a crash keeps what ran
    print(text)
    return 0 if runs else 1


def save(args: argparse.Namespace, cfg: dict, device: str, runs: list[dict], unavailable: dict) -> str:
    """Write the JSON and the markdown of the runs so far; return the markdown."""
    doc = {
        "config": cfg, "quick": args.quick, "env": environment(device), "runs": runs,
        "unavailable": unavailable,
        "same_schedules": len({json.dumps(r["indices"], sort_keys=True) for r in runs}) <= 1,
    }  # fmt: skip
    _write(args.out, json.dumps(doc, indent=1))
    text = markdown(doc)
    if args.markdown:
        _write(args.markdown, text)
    return text


if __name__ == "__main__":
    raise SystemExit(main())
