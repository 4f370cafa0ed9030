"""Benchmark harness: every implementation is timed beside its baseline in the same run, and the terminal
summary prints median times and speed-ups against the group's baseline (the test whose id contains
"baseline"), plus any floor a benchmark records in ``benchmark.extra_info["floor_s"]``.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

_rows: dict[str, list[tuple[str, float, dict]]] = defaultdict(list)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running cases")


def pytest_runtest_makereport(item, call):
    bench = item.funcargs.get("benchmark") if hasattr(item, "funcargs") else None
    if call.when == "call" and bench is not None and getattr(bench, "stats", None) is not None:
        data = bench.stats.stats.data
        if data:
            _rows[bench.group or item.name].append(
                (item.name, statistics.median(data), dict(bench.extra_info))
            )


def pytest_terminal_summary(terminalreporter):
    if not _rows:
        return
    tr = terminalreporter
    tr.section("boss_fast: medians and speed-ups against the baseline measured in this run")
    for group, rows in _rows.items():
        base = next((t for name, t, _ in rows if "baseline" in name), None)
        tr.write_line(f"[{group}]")
        for name, t, extra in rows:
            ratio = f"{base / t:10.1f}x" if base else ""
            floor = f"  floor {extra['floor_s'] * 1e3:.3f} ms" if "floor_s" in extra else ""
            tr.write_line(f"  {name:60s} {t * 1e3:11.3f} ms {ratio}{floor}")
