"""Fail when a function or method in boss_fast/ spans MAX_LINES lines or more (decorators and docstring
included): long functions mix set-up, computation and I/O; split them into named pieces.

    python scripts/check_function_length.py [--max N]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

MAX_LINES = 80
ROOT = Path(__file__).resolve().parent.parent / "boss_fast"


def function_lengths(root: Path = ROOT) -> list[tuple[int, str]]:
    """(lines, "path:line name") for every function and method under ``root``, longest first."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = node.end_lineno - first + 1
                found.append((lines, f"{path.relative_to(root.parent)}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=MAX_LINES, help="fail at this many lines or more")
    parser.add_argument("--show", type=int, default=0, help="print the N longest functions")
    args = parser.parse_args(argv)
    lengths = function_lengths()
    for lines, where in lengths[: args.show]:
        print(f"{lines:5d}  {where}")
    long = [(lines, where) for lines, where in lengths if lines >= args.max]
    for lines, where in long:
        print(f"{where}: {lines} lines (limit: under {args.max})", file=sys.stderr)
    return 1 if long else 0


if __name__ == "__main__":
    sys.exit(main())
