"""The production path at size: SD3-medium- and Flux-dev-shaped transformers through ``DiffusersVelocity``.

    python benchmarks/gpu/production.py --out production.json --markdown production.md [--budget 240]
    python benchmarks/gpu/production.py --out p.json --markdown p.md --quick   # tiny shapes, any device

Models: diffusers' ``SD3Transformer2DModel`` and ``FluxTransformer2DModel`` built from the published configs
below, in bfloat16 with random weights (normal, std 0.02: compute does not depend on the values, and small
weights keep 24-57 blocks finite), on the GPU, at a 1024^2 image: SD3's latent (16, 128, 128) with 333 text
tokens (77 CLIP + 256 T5), Flux's packed latents (4096, 64) with 512 text tokens, ``img_ids``/``txt_ids`` as
``FluxPipeline`` builds them and the distilled guidance 3.5. Stages, in order, each written to ``--out`` as
it ends (a run cut at its limit keeps what ran); a stage that would start past ``--budget`` is skipped and
says so:

1. ``calls``: one model call's time at batch 1, 4, 8 (after a warm-up; min and median of ``REPS``) and its
   peak device memory above the weights, for each model;
2. ``search``: a short global search (``SEARCH`` below: few noises, K <= 4, a small grid) per store, its peak
   device memory above the weights against docs/search_memory.md's law plus one model call of the search's
   widest width (measured apart), and its wall time against the same calls as plain forward passes
   (``search_figures.floor_seconds``); SD3 on every store, Flux on "host" (its 24 GB of weights leave the
   device store's rows little room at scale);
3. ``projection``: the default search (``SearchSettings()``, K <= 10; its evaluations per noise counted on a
   trivial velocity, not assumed) times the per-sample call time at the best measured batch, and that times
   the short search's measured time over its floor.

Without CUDA the peaks are None (CPU: the stand-in checks the script runs end to end).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import boss_fast as bf

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks.gpu when run as a script
from benchmarks.gpu.search_figures import _write, counted, environment, floor_seconds  # noqa: E402

# diffusers' SD3Transformer2DModel config of stabilityai/stable-diffusion-3-medium-diffusers
# (transformer/config.json): 24 MM-DiT blocks of 24 heads x 64 = 1536 wide, 2.0e9 parameters. Keys the
# published file leaves out take the class defaults (dual_attention_layers=(), qk_norm=None: SD3, not 3.5).
SD3_MEDIUM = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192,
}  # fmt: skip
# diffusers' FluxTransformer2DModel config of black-forest-labs/FLUX.1-dev (transformer/config.json): 19
# double and 38 single blocks of 24 heads x 128 = 3072 wide, guidance embedding (dev is guidance-distilled),
# 1.2e10 parameters. Every other key is the class default, which is FLUX.1's.
FLUX_DEV = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
    "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
}  # fmt: skip
# The stand-in's (--quick): the same classes, tiny, at a 128^2 image (latent 16x16).
SD3_TINY = {
    "sample_size": 16, "patch_size": 2, "in_channels": 16, "num_layers": 1, "attention_head_dim": 8,
    "num_attention_heads": 2, "joint_attention_dim": 32, "caption_projection_dim": 16,
    "pooled_projection_dim": 32, "out_channels": 16, "pos_embed_max_size": 16,
}  # fmt: skip
FLUX_TINY = {
    "patch_size": 1, "in_channels": 64, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
    "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32, "guidance_embeds": True,
    "axes_dims_rope": (4, 6, 6),
}  # fmt: skip

BATCHES = (1, 4, 8)
REPS = 3
# The short searches: grid points N = grid + 1, M noises, every K <= steps, calls of batch_size rows; the
# default teacher (heun). SD3 at D = 262144, s = 2 (bf16), so D s = 0.5 MiB: the law's device store is
# (3N - 1) M D s + N B D s = 400 + 68 = 468 MiB, host and disk 3 N B D s = 204 MiB, beside one call's own
# memory (measured apart); 62 evaluations per noise (992 in 124 calls of 8; Flux: 24 per noise).
STORES = ("device", "host", "disk")
SEARCH = {
    "sd3": {"grid": 16, "samples": 16, "steps": 3, "batch_size": 8, "stores": STORES},
    "flux": {"grid": 8, "samples": 2, "steps": 2, "batch_size": 2, "stores": ("host",)},
}
SEARCH_QUICK = {
    "sd3": {"grid": 6, "samples": 2, "steps": 2, "batch_size": 2, "stores": STORES},
    "flux": {"grid": 4, "samples": 2, "steps": 2, "batch_size": 2, "stores": ("host",)},
}


@dataclasses.dataclass
class Model:
    """A transformer through DiffusersVelocity, with what the script needs to know of it."""

    name: str
    velocity: torch.nn.Module
    shape: tuple[int, ...]  # one sample's latent
    parameters: int
    weight_bytes: int


def _random_init(net: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.02)


def build(name: str, quick: bool, device: str) -> Model:
    """SD3 ("sd3") or Flux ("flux") at a 1024^2 image (128^2 with ``quick``), bf16, random weights."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    from boss_fast.integrations.diffusers import DiffusersVelocity

    torch.manual_seed(0)
    dtype, side = torch.bfloat16, 16 if quick else 128  # the VAE's latent side: image / 8
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in bf16 on the device: Flux in float32 would take 48 GB first
    try:
        with torch.device(device):
            if name == "sd3":
                net = SD3Transformer2DModel(**(SD3_TINY if quick else SD3_MEDIUM))
            else:
                net = FluxTransformer2DModel(**(FLUX_TINY if quick else FLUX_DEV))
    finally:
        torch.set_default_dtype(previous)
    _random_init(net)
    net = net.eval().requires_grad_(False)
    cfg, new = net.config, {"device": device, "dtype": dtype}
    if name == "sd3":
        text = 8 if quick else 333
        velocity = DiffusersVelocity(
            net,
            encoder_hidden_states=torch.randn(1, text, cfg.joint_attention_dim, **new),
            pooled_projections=torch.randn(1, cfg.pooled_projection_dim, **new),
        )
        shape = (cfg.in_channels, side, side)
    else:
        text, grid = (8 if quick else 512), side // 2  # packed: 2x2 latent patches per token
        rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3)
        velocity = DiffusersVelocity(
            net,
            timestep_scale=1.0,  # the Flux pipeline passes sigma, the transformer scales by 1000 itself
            fixed={"txt_ids": torch.zeros(text, 3, **new), "img_ids": img_ids.to(**new)},
            encoder_hidden_states=torch.randn(1, text, cfg.joint_attention_dim, **new),
            pooled_projections=torch.randn(1, cfg.pooled_projection_dim, **new),
            guidance=torch.full((1,), 3.5, **new),
        )
        shape = (grid * grid, cfg.in_channels)
    count = sum(p.numel() for p in net.parameters())
    return Model(name, velocity, shape, count, sum(p.numel() * p.element_size() for p in net.parameters()))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def call_peak(model: Model, width: int, device: str) -> int | None:
    """Peak device bytes of one call of ``width`` rows above what was allocated before it (None on CPU)."""
    if device != "cuda":
        return None
    x = torch.randn(width, *model.shape, device=device, dtype=torch.bfloat16)
    t = torch.rand(width, device=device, dtype=torch.bfloat16)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    with torch.no_grad():
        model.velocity(x, t)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def time_calls(model: Model, device: str, batches: tuple[int, ...] = BATCHES) -> dict[str, dict]:
    """{batch: seconds (min, median of REPS after a warm-up), per sample, peak bytes above the weights}."""
    out = {}
    with torch.no_grad():
        for b in batches:
            x = torch.randn(b, *model.shape, device=device, dtype=torch.bfloat16)
            t = torch.rand(b, device=device, dtype=torch.bfloat16)
            model.velocity(x, t)  # warm-up: kernels chosen, workspaces allocated
            times = []
            for _ in range(REPS):
                _sync(device)
                start = time.perf_counter()
                model.velocity(x, t)
                _sync(device)
                times.append(time.perf_counter() - start)
            out[str(b)] = {
                "min_s": min(times),
                "median_s": statistics.median(times),
                "per_sample_s": min(times) / b,
                "peak_bytes": call_peak(model, b, device),
            }
    return out


def law_bytes(store: str, cfg: dict, d: int, s: int) -> int:
    """docs/search_memory.md's device bytes of the global search's rows: N grid points, M noises,
    B = min(batch_size, M) in flight, D values per sample of s bytes."""
    n, m = cfg["grid"] + 1, cfg["samples"]
    b = min(cfg["batch_size"], m)
    if store == "device":
        return (3 * n - 1) * m * d * s + n * b * d * s
    return 3 * n * b * d * s


def search_store(model: Model, cfg: dict, store: str, device: str) -> dict:
    """One short global search on ``store``: peak device bytes against the law plus one widest call, and
    wall time against the same calls as plain forward passes."""
    widths: list[int] = []
    velocity = counted(model.velocity, widths)
    settings = bf.SearchSettings(grid=cfg["grid"], num_samples=cfg["samples"], batch_size=cfg["batch_size"],
                                 objective="global", store=store)  # fmt: skip
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if device == "cuda" else 0
    start = time.perf_counter()
    with torch.no_grad():
        bf.optimal_schedules(
            velocity, model.shape, cfg["steps"], settings, device=device, dtype=torch.bfloat16
        )
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - before if device == "cuda" else None
    d = 1
    for n in model.shape:
        d *= n
    law = law_bytes(store, cfg, d, 2)
    call = call_peak(model, max(widths), device)
    floor = floor_seconds(model.velocity, widths, device, shape=model.shape, dtype=torch.bfloat16)
    return {
        "store": store, "seconds": seconds, "floor_seconds": floor, "over_floor": seconds / floor,
        "calls": len(widths), "samples": sum(widths), "evaluations_per_noise": sum(widths) / cfg["samples"],
        "widest_call": max(widths), "peak_device_bytes": peak, "law_bytes": law, "call_peak_bytes": call,
        "peak_over_law": None if peak is None else (peak - call) / law,
    }  # fmt: skip


def default_evaluations_per_noise(max_steps: int = 10) -> float:
    """Model evaluations per noise of the default search (``SearchSettings()``, every K <= ``max_steps``),
    counted on a trivial velocity on the CPU (they depend on the grid, the teacher and K, not the model)."""
    widths: list[int] = []
    settings = bf.SearchSettings(num_samples=2, batch_size=2)
    bf.optimal_schedules(counted(lambda x, t: -x, widths), (2,), max_steps, settings, device="cpu")
    return sum(widths) / 2


def projection(doc: dict) -> dict:
    """The default search's time per model: evaluations x the best per-sample call time, and that x the
    short search's measured time over its floor (the first store's)."""
    default = bf.SearchSettings()
    evaluations = doc["default_evaluations_per_noise"] * default.num_samples
    out = {}
    for name, calls in doc["calls"].items():
        per_sample = min(c["per_sample_s"] for c in calls.values())
        runs = doc["search"].get(name, [])
        over = runs[0]["over_floor"] if runs else None
        seconds = evaluations * per_sample
        out[name] = {
            "evaluations": evaluations,
            "per_sample_s": per_sample,
            "floor_hours": seconds / 3600,
            "with_overhead_hours": None if over is None else seconds * over / 3600,
        }
    return out


def run_stages(doc: dict, args: argparse.Namespace, save: Callable[[], None]) -> None:
    """The stages in order of importance, each saved as it ends; past the budget a stage is skipped."""
    device = doc["device"]
    deadline = time.monotonic() + args.budget
    models: dict[str, Model] = {}
    searches = SEARCH_QUICK if args.quick else SEARCH
    stages: list[tuple[str, Callable[[], None]]] = []
    for name in ("sd3", "flux"):
        stages.append((f"calls {name}", lambda n=name: _calls_stage(doc, models, n, args.quick, device)))
    for name in ("sd3", "flux"):
        for store in searches[name]["stores"]:
            cfg = searches[name]
            stages.append(
                (
                    f"search {name} {store}",
                    lambda n=name, c=cfg, s=store: _search_stage(doc, models, n, c, s, device),
                )
            )
    for label, stage in stages:
        if time.monotonic() > deadline:
            doc["skipped"].append(f"{label}: past the {args.budget:.0f} s budget")
        else:
            t0 = time.monotonic()
            stage()
            doc["stage_seconds"][label] = time.monotonic() - t0
        save()
    doc["projection"] = projection(doc)
    save()


def _calls_stage(doc: dict, models: dict, name: str, quick: bool, device: str) -> None:
    t0 = time.monotonic()
    models[name] = build(name, quick, device)
    m = models[name]
    doc["models"][name] = {"shape": list(m.shape), "parameters": m.parameters, "weight_bytes": m.weight_bytes,
                           "build_s": time.monotonic() - t0}  # fmt: skip
    doc["calls"][name] = time_calls(m, device)


def _search_stage(doc: dict, models: dict, name: str, cfg: dict, store: str, device: str) -> None:
    if name not in models:
        doc["skipped"].append(f"search {name} {store}: the model was not built")
        return
    doc["search_config"][name] = {k: v for k, v in cfg.items() if k != "stores"}
    doc["search"].setdefault(name, []).append(search_store(models[name], cfg, store, device))


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f}"


def markdown(doc: dict) -> str:
    """Tables of the calls, the searches against the law and floor, and the projection."""
    lines = [f"# The production path at size ({doc['env']['device']}{', quick' if doc['quick'] else ''})", ""]
    lines += [f"- {n}: latent {tuple(m['shape'])}, {m['parameters']:,} parameters, "
              f"{m['weight_bytes'] / 2**30:.2f} GiB bf16, built in {m['build_s']:.1f} s"
              for n, m in doc["models"].items()]  # fmt: skip
    lines += ["", "| model | batch | min ms | median ms | ms / sample | peak MiB above weights |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for name, calls in doc["calls"].items():
        for b, c in calls.items():
            peak = _mib(c["peak_bytes"])
            lines.append(f"| {name} | {b} | {c['min_s'] * 1e3:.1f} | {c['median_s'] * 1e3:.1f} | "
                         f"{c['per_sample_s'] * 1e3:.1f} | {peak} |")  # fmt: skip
    lines += ["", "| model | store | s | floor s | x floor | evals / noise | peak MiB | law MiB | call MiB |"
              " (peak - call) / law |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, runs in doc["search"].items():
        for r in runs:
            peak, call = (_mib(r[k]) for k in ("peak_device_bytes", "call_peak_bytes"))
            ratio = "n/a" if r["peak_over_law"] is None else f"{r['peak_over_law']:.3f}"
            lines.append(
                f"| {name} | {r['store']} | {r['seconds']:.1f} | {r['floor_seconds']:.1f} | "
                f"{r['over_floor']:.2f} | {r['evaluations_per_noise']:.0f} | {peak} | "
                f"{_mib(r['law_bytes'])} | {call} | {ratio} |"
            )
    lines += ["", f"Search configs: {json.dumps(doc['search_config'])}", "",
              f"Default search: {doc['default_evaluations_per_noise']:.0f} evaluations per noise x "
              f"{bf.SearchSettings().num_samples} noises (SearchSettings(), K <= 10).", ""]  # fmt: skip
    for name, p in doc.get("projection", {}).items():
        over = "n/a" if p["with_overhead_hours"] is None else f"{p['with_overhead_hours']:.2f} h"
        lines.append(
            f"- {name}: {p['evaluations']:.0f} evaluations x {p['per_sample_s'] * 1e3:.1f} ms = "
            f"{p['floor_hours']:.2f} h at the forward-pass floor, {over} at the short search's overhead"
        )
    lines += [f"- skipped: {s}" for s in doc["skipped"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--markdown", required=True, help="markdown tables to write")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds after which no stage starts")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (the CPU stand-in)")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    configs = {"sd3": SD3_TINY, "flux": FLUX_TINY} if args.quick else {"sd3": SD3_MEDIUM, "flux": FLUX_DEV}
    doc = {
        "kind": "production", "quick": args.quick, "device": device, "env": environment(device),
        "configs": configs, "models": {}, "calls": {}, "search": {}, "search_config": {}, "stage_seconds": {},
        "skipped": [], "default_evaluations_per_noise": default_evaluations_per_noise(),
    }  # fmt: skip

    def save() -> None:
        _write(args.out, json.dumps(doc, indent=1))
        _write(args.markdown, markdown(doc))

    run_stages(doc, args, save)
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
