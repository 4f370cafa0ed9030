"""Sweep the fused head kernel's tiles on CUDA against the unfused GEMM + update, at batch 1, 16 and 64 in
float32 and bfloat16, and say where the fused head wins (the sampler's default follows that table).

    python benchmarks/gpu/tune_head.py --out fused_head.json --markdown tune_head.md [--budget 90] [--quick]

The case is the benchmark's (benchmarks/test_bench_sampler.py::test_fused_head): the latent DiT's head,
features (B, 256, 384), head 384 -> 16, state (B, 4, 32, 32). Every launch is timed inside a CUDA graph
(``triton.testing.do_bench_cudagraph``: device time, no Python launch overhead), the unfused GEMM +
unpatchify + Euler update too; each config compiles once per dtype (the batch is a runtime size) and its
output is first poisoned with NaN and compared with a float64 reference by ||out - ref|| / ||ref||. The floor
is the bytes the kernel must move (features, weight and bias read once, the state read and written) over a
device-to-device copy's measured bandwidth. Configs that do not compile (shared memory) are listed as such.

``--out`` holds every row and ``table``: {dtype: {batch: the default tiles (``DEFAULT_LAUNCH``) beat the
unfused path}}, the table ``boss_fast.kernels.linear_euler.FUSED_HEAD_WINS`` is to hold (``table_best``: the
same with each case's best tiles). Without CUDA it writes a report saying so and exits 0 (the CPU stand-in).
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

BATCHES, C, H, P, HIDDEN = (1, 16, 64), 4, 32, 2, 384


def _inputs(batch: int, dtype: torch.dtype, gen: torch.Generator):
    t = (H // P) ** 2
    n = P * P * C
    f = torch.randn(batch, t, HIDDEN, generator=gen, device="cuda").to(dtype)
    w = (torch.randn(n, HIDDEN, generator=gen, device="cuda") / HIDDEN**0.5).to(dtype)
    b = torch.randn(n, generator=gen, device="cuda").to(dtype)
    x = torch.randn(batch, C, H, H, generator=gen, device="cuda").to(dtype)
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
    """DEFAULT_LAUNCH first (it is what the sampler runs: never skipped for time), then the sweep."""
    if quick:
        grid = [(128, 64, 8, 3)]
    else:
        grid = itertools.product((32, 64, 128), (32, 64, 128), (4, 8), (3, 4))
    return [DEFAULT_LAUNCH] + [c for c in (LaunchConfig(*g) for g in grid) if c != DEFAULT_LAUNCH]


def _case(batch: int, dtype: torch.dtype, gen: torch.Generator, bandwidth: float) -> dict:
    """One (batch, dtype): its inputs, float64 reference, floor and the unfused path's time in a graph."""
    from triton.testing import do_bench_cudagraph

    f, w, b, x = _inputs(batch, dtype, gen)
    h = 1e-3
    moved = (f.numel() + w.numel() + b.numel()) * f.element_size() + 2 * x.numel() * x.element_size()
    out = torch.empty_like(x)
    unfused = functools.partial(_unfused, f, w, b, x, h, out)
    unfused()
    return {
        "tensors": (f, w, b, x, h, out),
        "ref": linear_euler_reference(f.double(), w.double(), b.double(), x.double(), h, P),
        "bytes": moved,
        "floor_us": moved / bandwidth * 1e6,
        "unfused_us": do_bench_cudagraph(unfused, rep=50) * 1e3,
        "configs": [],
    }


def _time_config(case: dict, cfg: LaunchConfig) -> dict:
    """One config on one case: its device time in a CUDA graph and its error, or why it did not run."""
    from triton.testing import do_bench_cudagraph

    f, w, b, x, h, out = case["tensors"]
    row = vars(cfg).copy()
    try:
        out.fill_(float("nan"))
        _linear_euler_triton(f, w, b, x, h, P, out, config=cfg)
        torch.cuda.synchronize()
        err = ((out.double() - case["ref"]).norm() / case["ref"].norm()).item()
        launch = functools.partial(_linear_euler_triton, f, w, b, x, h, P, out, config=cfg)
        us = do_bench_cudagraph(launch, rep=50) * 1e3
        row.update(us=us, rel_err=err, x_floor=us / case["floor_us"], speedup=case["unfused_us"] / us)
    except Exception as exc:  # noqa: BLE001 - a config that does not compile is a row, not a crash
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return row


def _summarise(case: dict) -> dict:
    """The case without its tensors, with the default tiles' and the best tiles' figures."""
    timed = [r for r in case["configs"] if "us" in r and r["rel_err"] == r["rel_err"]]
    first = case["configs"][0]  # DEFAULT_LAUNCH (_configs puts it first, never skipped)
    default = first if first in timed else None
    best = min(timed, key=lambda r: r["us"]) if timed else None
    return {
        **{k: v for k, v in case.items() if k not in ("tensors", "ref")},
        "default_us": None if default is None else default["us"],
        "default_speedup": None if default is None else default["speedup"],
        "best": best,
    }


def sweep(budget_s: float, quick: bool) -> dict:
    """Every (dtype, batch) case, every config until each dtype's half of the budget is spent."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    bandwidth = _bandwidth()
    result = {"kind": "fused_head", "device": torch.cuda.get_device_name(), "bandwidth_Bps": bandwidth,
              "default": vars(DEFAULT_LAUNCH), "batches": list(BATCHES), "cases": {}}  # fmt: skip
    for dtype in (torch.float32, torch.bfloat16):
        deadline = time.monotonic() + budget_s / 2
        cases = {batch: _case(batch, dtype, gen, bandwidth) for batch in BATCHES}
        for i, cfg in enumerate(_configs(quick)):
            for case in cases.values():
                late = i > 0 and time.monotonic() > deadline
                case["configs"].append(
                    {**vars(cfg), "skipped": "budget"} if late else _time_config(case, cfg)
                )
        name = str(dtype).removeprefix("torch.")
        result["cases"][name] = {str(b): _summarise(c) for b, c in cases.items()}
    result["table"] = wins_table(result, "default_us")
    result["table_best"] = wins_table(result, "best")
    return result


def wins_table(result: dict, which: str) -> dict[str, dict[str, bool]]:
    """{dtype: {batch: fused faster than unfused}}, with the default tiles ("default_us") or the best."""
    table = {}
    for dtype, cases in result["cases"].items():
        row = {}
        for batch, case in cases.items():
            us = case["default_us"] if which == "default_us" else (case["best"] or {}).get("us")
            if us is not None:
                row[batch] = us < case["unfused_us"]
        table[dtype] = row
    return table


def markdown(result: dict) -> str:
    if "error" in result:
        return f"# Fused head tile sweep\n\n{result['error']}\n"
    lines = [
        f"# Fused head tile sweep ({result['device']})",
        "",
        f"Latent DiT head: features (B, {(H // P) ** 2}, {HIDDEN}) -> {P * P * C}, state (B, {C}, {H}, {H});"
        f" device time inside a CUDA graph; copy bandwidth {result['bandwidth_Bps'] / 1e12:.2f} TB/s; default"
        f" tiles {result['default']}.",
        "",
        "| dtype | batch | unfused us | fused (default tiles) us | unfused / fused | best tiles | best us |"
        " best x floor | default is fused |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dtype, cases in result["cases"].items():
        for batch, c in cases.items():
            best = c["best"] or {}
            tiles = "/".join(str(best.get(k, "-")) for k in ("block_m", "block_k", "num_warps", "num_stages"))
            default = "n/a" if c["default_us"] is None else f"{c['default_us']:.1f}"
            speedup = "n/a" if c["default_speedup"] is None else f"{c['default_speedup']:.2f}"
            lines.append(
                f"| {dtype} | {batch} | {c['unfused_us']:.1f} | {default} | {speedup} | {tiles} |"
                f" {best.get('us', float('nan')):.1f} | {best.get('x_floor', float('nan')):.2f} |"
                f" {result['table'][dtype].get(batch)} |"
            )
    lines += ["", f"FUSED_HEAD_WINS = {json.dumps(python_table(result['table']))}", ""]
    return "\n".join(lines)


def python_table(table: dict[str, dict[str, bool]]) -> dict[str, dict[int, bool]]:
    """The table with integer batches, as ``FUSED_HEAD_WINS`` holds it."""
    return {dtype: {int(b): w for b, w in row.items()} for dtype, row in table.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON: every row and the table of wins")
    ap.add_argument("--markdown", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=90.0, help="seconds of sweeping")
    ap.add_argument("--quick", action="store_true", help="two configs (the CPU stand-in)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        result = {"error": "no CUDA device: nothing swept"}
    else:
        result = sweep(args.budget, args.quick)
    _write(args.out, json.dumps(result, indent=1))
    _write(args.markdown, markdown(result))
    return 0


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
