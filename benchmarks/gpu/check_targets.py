"""Check issue 5's GPU targets in pytest-benchmark JSONs from ``benchmarks/test_bench_sampler.py``.

    python benchmarks/gpu/check_targets.py env.txt bench.json [more.json ...] > targets.md
    python benchmarks/gpu/check_targets.py --merge merged.json a.json b.json   # one JSON of all their cases

Targets (NVIDIA H100): cuda_graph >= 3x eager at batch 1 and within 1.3x of the sum of its kernels' device
times; the fused head + update >= 1.2x the unfused GEMM + update at batch 64 and within 1.5x of its bytes'
bandwidth floor. Prints a markdown report; exits 1 when a target is missed or a figure is absent. A missing
or unreadable JSON (a step cut short) is reported as a miss, as is every target without its figures (no CUDA
device).
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


def report(bench: dict, env: str, problems: list[str] | tuple[str, ...] = ()) -> tuple[str, bool]:
    """The markdown report and whether every target was met; each of ``problems`` (an input that could not
    be read) is a miss."""
    data = _medians(bench)
    rows = ["| result | target and figures |", "|---|---|"]
    all_ok = not problems
    for problem in problems:
        _check(rows, False, problem)
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
    why = "no GPU figures" + (": no CUDA device" if "NO CUDA DEVICE" in env else " in the input")
    if not any("test_cuda_graph" in row for row in rows):
        all_ok &= _check(rows, False, f"cuda_graph at batch 1: >= 3x eager, <= 1.3x its kernels: {why}")
    if not any("fused head" in row for row in rows):
        all_ok &= _check(rows, False, f"fused head at batch 64: >= 1.2x unfused, <= 1.5x its floor: {why}")
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


def load(paths: list[str]) -> tuple[dict, list[str]]:
    """Every case of the pytest-benchmark JSONs ``paths`` in one dict (the first readable file's machine and
    commit info), and one problem line per file that is missing or unreadable."""
    merged: dict = {"benchmarks": []}
    problems = []
    for path in paths:
        try:
            bench = json.loads(Path(path).read_text())
            cases = bench["benchmarks"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            problems.append(f"{path}: no figures ({type(err).__name__}: {err}); was its step cut short?")
            continue
        if len(merged) == 1:
            merged.update({k: v for k, v in bench.items() if k != "benchmarks"})
        merged["benchmarks"].extend(cases)
    return merged, problems


def merge(out: str, paths: list[str]) -> None:
    """Write the merged cases of ``paths`` to ``out`` through a temporary name (a reader never sees half)."""
    merged, problems = load(paths)
    for problem in problems:
        print(problem, file=sys.stderr)
    tmp = Path(f"{out}.tmp")
    tmp.write_text(json.dumps(merged, indent=1))
    tmp.replace(out)


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[1] == "--merge":
        merge(argv[2], argv[3:])
        return 0
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    env_path = Path(argv[1])
    env = env_path.read_text() if env_path.is_file() else f"{env_path}: missing"
    bench, problems = load(argv[2:])
    text, ok = report(bench, env, problems)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
