"""Check issue 5's GPU targets in a pytest-benchmark JSON from ``benchmarks/test_bench_sampler.py``.

    python benchmarks/gpu/check_targets.py bench_sampler.json env.txt > targets.md

Targets (NVIDIA H100): cuda_graph >= 3x eager at batch 1 and within 1.3x of the sum of its kernels' device
times; the fused head + update >= 1.2x the unfused GEMM + update at batch 64 and within 1.5x of its bytes'
bandwidth floor. Prints a markdown report; exits 1 when a target is missed or a figure is absent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _medians(bench: dict) -> dict[tuple[str, str], dict]:
    """(group, test name) -> {"median": s, "extra": extra_info}."""
    return {
        (b["group"], b["name"]): {"median": b["stats"]["median"], "extra": b.get("extra_info", {})}
        for b in bench["benchmarks"]
    }


def _check(rows: list[str], ok: bool, text: str) -> bool:
    rows.append(f"| {'PASS' if ok else 'MISS'} | {text} |")
    return ok


def report(bench: dict, env: str) -> tuple[str, bool]:
    """The markdown report and whether every target was met."""
    data = _medians(bench)
    rows = ["| result | target and figures |", "|---|---|"]
    all_ok = True
    groups = sorted({g for g, _ in data})
    for group in groups:
        cases = {name: v for (g, name), v in data.items() if g == group}
        base = next((v for n, v in cases.items() if "baseline" in n), None)
        if group.startswith("sampler") and " B=1 " in group and base is not None:
            for name, v in cases.items():
                if not name.startswith("test_cuda_graph"):
                    continue
                speedup = base["median"] / v["median"]
                floor = v["extra"].get("floor_s")
                all_ok &= _check(rows, speedup >= 3.0, f"{group} {name}: {speedup:.1f}x eager (>= 3x)")
                if floor:
                    ratio = v["median"] / floor
                    all_ok &= _check(
                        rows,
                        ratio <= 1.3,
                        f"{group} {name}: {v['median'] * 1e6:.1f} us = {ratio:.2f}x the kernels' "
                        f"{floor * 1e6:.1f} us (<= 1.3x)",
                    )
        if group.startswith("fused head"):
            fused = cases.get("test_fused_head")
            if base is None or fused is None:
                all_ok &= _check(rows, False, f"{group}: fused or unfused figure missing")
                continue
            speedup = base["median"] / fused["median"]
            all_ok &= _check(rows, speedup >= 1.2, f"{group}: fused {speedup:.2f}x the unfused (>= 1.2x)")
            floor = fused["extra"]["floor_s"]
            ratio = fused["median"] / floor
            all_ok &= _check(
                rows,
                ratio <= 1.5,
                f"{group}: fused {fused['median'] * 1e6:.1f} us = {ratio:.2f}x the bandwidth floor "
                f"{floor * 1e6:.1f} us of {fused['extra']['bytes']} bytes (<= 1.5x)",
            )
    if len(rows) == 2:
        all_ok = _check(rows, False, "no GPU figures in this file (was it run on a CUDA machine?)")
    table = "\n".join(rows)
    medians = "\n".join(
        f"| {g} | {n} | {v['median'] * 1e3:.3f} | {v['extra'].get('compile_s') or ''} |"
        for (g, n), v in sorted(data.items())
    )
    text = (
        f"# Sampler on GPU: issue 5 targets\n\n```\n{env.strip()}\n```\n\n{table}\n\n"
        f"## Medians\n\n| group | case | median ms | compile s |\n|---|---|---|---|\n{medians}\n"
    )
    return text, all_ok


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    bench = json.loads(Path(argv[1]).read_text())
    text, ok = report(bench, Path(argv[2]).read_text())
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
