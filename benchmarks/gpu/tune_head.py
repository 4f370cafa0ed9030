"""Sweep the fused head kernel's tiles on CUDA against the unfused GEMM + update and the bandwidth floor.

    python benchmarks/gpu/tune_head.py --out tune_head.json --markdown tune_head.md [--budget 90] [--quick]

The case is the benchmark's (benchmarks/test_bench_sampler.py::test_fused_head): the latent DiT's head at
batch 64, features (64, 256, 384), head 384 -> 16, state (64, 4, 32, 32), in float32 and bfloat16. Every
launch is timed inside a CUDA graph (``triton.testing.do_bench_cudagraph``: device time, no Python launch
overhead); each config's output is first poisoned with NaN and compared with a float64 reference by
||out - ref|| / ||ref||. The floor is the bytes the kernel must move (features, weight and bias read once, the
state read and written) over a device-to-device copy's measured bandwidth. Configs that do not compile (shared
memory) are listed as such. Without CUDA it writes a report saying so and exits 0 (the CPU stand-in).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from boss_fast.kernels.euler_step import euler_step_forward
from boss_fast.kernels.linear_euler import (
    DEFAULT_LAUNCH,
    LaunchConfig,
    _linear_euler_triton,
    linear_euler_reference,
    unpatchify,
)

B, C, H, P, HIDDEN = 64, 4, 32, 2, 384


def _inputs(dtype: torch.dtype, gen: torch.Generator):
    t = (H // P) ** 2
    n = P * P * C
    f = torch.randn(B, t, HIDDEN, generator=gen, device="cuda").to(dtype)
    w = (torch.randn(n, HIDDEN, generator=gen, device="cuda") / HIDDEN**0.5).to(dtype)
    b = torch.randn(n, generator=gen, device="cuda").to(dtype)
    x = torch.randn(B, C, H, H, generator=gen, device="cuda").to(dtype)
    return f, w, b, x


def _unfused(f, w, b, x, h, out) -> None:
    """The baseline: the head's GEMM (cuBLAS), unpatchify, then the Triton Euler step."""
    v = unpatchify(F.linear(f, w, b), P, C, H, H)
    euler_step_forward(x, v, h, None, "triton", out=out)


def _bandwidth() -> float:
    from triton.testing import do_bench

    src = torch.randn(2**28, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="min")
    return 2 * src.numel() * 4 / (ms * 1e-3)


def _configs(quick: bool) -> list[LaunchConfig]:
    if quick:
        return [LaunchConfig(), LaunchConfig(128, 64, 8, 3)]
    grid = itertools.product((32, 64, 128), (32, 64, 128), (4, 8), (3, 4))
    return [LaunchConfig(*c) for c in grid]


def sweep(budget_s: float, quick: bool) -> dict:
    from triton.testing import do_bench_cudagraph

    gen = torch.Generator(device="cuda").manual_seed(0)
    bandwidth = _bandwidth()
    h = 1e-3
    result = {"device": torch.cuda.get_device_name(), "bandwidth_Bps": bandwidth, "dtypes": {}}
    for dtype in (torch.float32, torch.bfloat16):
        deadline = time.monotonic() + budget_s / 2  # half the budget per dtype
        f, w, b, x = _inputs(dtype, gen)
        ref = linear_euler_reference(f.double(), w.double(), b.double(), x.double(), h, P)
        moved = (f.numel() + w.numel() + b.numel()) * f.element_size() + 2 * x.numel() * x.element_size()
        floor_us = moved / bandwidth * 1e6
        out = torch.empty_like(x)
        unfused = functools.partial(_unfused, f, w, b, x, h, out)
        unfused()
        entry = {
            "bytes": moved,
            "floor_us": floor_us,
            "unfused_us": do_bench_cudagraph(unfused, rep=50) * 1e3,
            "default": vars(DEFAULT_LAUNCH),
            "configs": [],
        }
        for cfg in _configs(quick):
            row = vars(cfg).copy()
            if time.monotonic() > deadline:
                row["skipped"] = "budget"
                entry["configs"].append(row)
                continue
            try:
                out.fill_(float("nan"))
                _linear_euler_triton(f, w, b, x, h, P, out, config=cfg)
                torch.cuda.synchronize()
                err = ((out.double() - ref).norm() / ref.norm()).item()
                launch = functools.partial(_linear_euler_triton, f, w, b, x, h, P, out, config=cfg)
                us = do_bench_cudagraph(launch, rep=50)
                row.update(us=us * 1e3, rel_err=err, x_floor=us * 1e3 / floor_us)
            except Exception as exc:  # noqa: BLE001 - a config that does not compile is a row, not a crash
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            entry["configs"].append(row)
        timed = [r for r in entry["configs"] if "us" in r and r["rel_err"] == r["rel_err"]]
        entry["best"] = min(timed, key=lambda r: r["us"]) if timed else None
        result["dtypes"][str(dtype).removeprefix("torch.")] = entry
    return result


def markdown(result: dict) -> str:
    if "error" in result:
        return f"# Fused head tile sweep\n\n{result['error']}\n"
    lines = [
        f"# Fused head tile sweep ({result['device']})",
        "",
        f"Latent DiT head at batch 64: features ({B}, {(H // P) ** 2}, {HIDDEN}) -> {P * P * C}, state "
        f"({B}, {C}, {H}, {H}); device time inside a CUDA graph; copy bandwidth "
        f"{result['bandwidth_Bps'] / 1e12:.2f} TB/s.",
        "",
    ]
    for name, e in result["dtypes"].items():
        lines += [
            f"## {name}: floor {e['floor_us']:.1f} us ({e['bytes']} bytes); unfused GEMM + update "
            f"{e['unfused_us']:.1f} us",
            "",
            "| block_m | block_k | warps | stages | us | x floor | unfused / fused | rel err |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(e["configs"], key=lambda r: r.get("us", float("inf"))):
            cfg = f"| {r['block_m']} | {r['block_k']} | {r['num_warps']} | {r['num_stages']} |"
            if "us" in r:
                lines.append(
                    f"{cfg} {r['us']:.1f} | {r['x_floor']:.2f} | {e['unfused_us'] / r['us']:.2f} | "
                    f"{r['rel_err']:.1e} |"
                )
            else:
                lines.append(f"{cfg} {r.get('error', r.get('skipped'))} | | | |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--markdown", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=90.0, help="seconds of sweeping")
    ap.add_argument("--quick", action="store_true", help="two configs (the CPU stand-in)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        result = {"error": "no CUDA device: nothing swept"}
    else:
        result = sweep(args.budget, args.quick)
    args.out.write_text(json.dumps(result, indent=1))
    args.markdown.write_text(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
