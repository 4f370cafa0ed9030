"""boss_fast.report: the markdown tables of the demo report."""

from __future__ import annotations

from boss_fast.report import markdown_table

# From test_demo.py


def test_markdown_table_intervals_and_missing_budgets() -> None:
    results = {
        "uniform": {1: {"rmse": 0.5, "d": [0.0, 0.0, 0.0]}, 2: {"rmse": 0.2, "d": [0.0, 0.0, 0.0]}},
        "oracle": {2: {"rmse": 0.1, "d": [-0.1, -0.12, -0.08]}},
    }
    table = markdown_table(results, "rmse", [1, 2], digits=3, delta="d", baseline="uniform")
    assert "| 1 | **0.500** | - |" in table
    assert "| 2 | 0.200 | **0.100** (-50.0% [-60.0, -40.0]) |" in table
