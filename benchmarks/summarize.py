"""Render a pytest-benchmark JSON file as the Markdown table docs/results.md shows.

    python benchmarks/summarize.py benchmarks/results/cpu_stage1.json

Per group: each benchmark's median, and its speed-up over the group's baseline (the benchmark whose name
contains "baseline") measured in the same run; a recorded floor where the benchmark has one.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 1 else f"{seconds:.2f} s"


def summarize(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    groups: dict[str, list[dict]] = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench["group"]].append(bench)
    info = data["machine_info"]
    lines = [
        f"Run {data['datetime'][:16]}Z on {info.get('cpu', {}).get('brand_raw', '?')} "
        f"({info.get('cpu', {}).get('count', '?')} cores), Python {info.get('python_version', '?')}.",
        "",
        "| group | benchmark | median | vs baseline | floor |",
        "|---|---|---:|---:|---:|",
    ]
    for group, benches in groups.items():
        base = next((b["stats"]["median"] for b in benches if "baseline" in b["name"]), None)
        for b in benches:
            median = b["stats"]["median"]
            skip = base is None or "baseline" in b["name"] or "floor" in b["name"]
            speedup = 0.0 if skip else base / median
            ratio = "" if skip else (f"{speedup:.2f}x" if speedup < 10 else f"{speedup:.0f}x")
            floor = b.get("extra_info", {}).get("floor_s")
            name = b["name"].removeprefix("test_")
            lines.append(f"| {group} | {name} | {_fmt(median)} | {ratio} | {_fmt(floor) if floor else ''} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(summarize(sys.argv[1]))
