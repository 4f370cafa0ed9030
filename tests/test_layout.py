"""The package's shape: short functions, boss_fast imports at module top only, the layers contract."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from check_function_length import MAX_LINES, function_lengths  # noqa: E402


def test_every_function_is_under_the_length_limit():
    long = [f"{where}: {lines}" for lines, where in function_lengths() if lines >= MAX_LINES]
    assert not long, f"functions of {MAX_LINES} lines or more: {long}"


def test_boss_fast_is_imported_at_module_top_only():
    """A function-level import of a boss_fast module hides a dependency from the layers contract."""
    nested = []
    for path in sorted((ROOT / "boss_fast").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                for inner in ast.walk(node):
                    names = []
                    if isinstance(inner, ast.Import):
                        names = [a.name for a in inner.names]
                    elif isinstance(inner, ast.ImportFrom):
                        names = [inner.module or ""]
                    nested += [
                        f"{path.name}:{inner.lineno} {n}" for n in names if n.split(".")[0] == "boss_fast"
                    ]
    assert not nested, nested


def test_no_private_name_is_imported_across_modules():
    found = []
    for path in sorted((ROOT / "boss_fast").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("boss_fast"):
                found += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert not found, found


def test_the_package_imports_nothing_from_benchmarks_or_scripts():
    """An installed boss_fast has no benchmarks/ or scripts/ folder (they exist only in a clone), and the
    layers contract cannot see a dynamic import: neither an import statement nor a string handed to
    importlib may name them."""
    outside = ("benchmarks", "scripts")
    found = []
    for path in sorted((ROOT / "boss_fast").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value] if node.value.split(".")[0] in outside and "." in node.value else []
            found += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in outside]
    assert not found, found


@pytest.mark.skipif(
    importlib.util.find_spec("importlinter") is None, reason="needs import-linter (test extra)"
)
def test_the_layers_contract_holds():
    result = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
