"""The package's shape: short functions, boss_fast imports at module top only, the layers contract."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import boss_fast

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


MAX_PARAMETERS = 12


def _public_callables(module):
    """(qualified name, callable) of the public functions, classes and public methods ``module`` defines."""
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            yield f"{module.__name__}.{name}", obj
        elif inspect.isclass(obj):
            # A frozen dataclass's constructor is its list of named, validated fields (a settings object such
            # as SearchSettings, or a record such as Schedule): the limit is for functions and methods.
            if not (dataclasses.is_dataclass(obj) and obj.__dataclass_params__.frozen):
                yield f"{module.__name__}.{name}()", obj
            for attr, member in vars(obj).items():
                func = member.__func__ if isinstance(member, classmethod | staticmethod) else member
                if not attr.startswith("_") and inspect.isfunction(func):
                    yield f"{module.__name__}.{name}.{attr}", func


# Named exceptions, each with its reason. diffusers' @register_to_config builds a scheduler's config from
# its __init__ signature: every stock FlowMatchEulerDiscreteScheduler key a pipeline reads (14) must be a
# parameter for from_config / save_config round trips, beside the schedule's times, searched_shape and mu.
WIDE_BY_CONTRACT = {"boss_fast.integrations.diffusers.BossScheduler()": 17}


def test_no_public_callable_takes_more_than_twelve_parameters():
    """A function with more knobs than a reader holds takes a settings object (``self``, ``cls`` not
    counted)."""
    wide = []
    for info in pkgutil.walk_packages(boss_fast.__path__, "boss_fast."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional extra (diffusers, peft, ...) that is not installed here
            continue
        for name, fn in _public_callables(module):
            try:
                signature = inspect.signature(fn)
            except ValueError:  # a class without a Python signature (e.g. a torch.autograd.Function)
                continue
            params = [p for p in signature.parameters if p not in ("self", "cls")]
            if len(params) > MAX_PARAMETERS:
                wide.append(f"{name}: {len(params)}")
    expected = [f"{name}: {n}" for name, n in WIDE_BY_CONTRACT.items()]
    if importlib.util.find_spec("diffusers") is None:
        expected = []  # the exception's module is not importable here
    assert sorted(wide) == sorted(expected), f"public callables with more than {MAX_PARAMETERS} parameters"


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


# One test file per module: tests/test_<module>.py, a subpackage's module as <pkg>_<module>, a package's
# __init__ as <pkg>; a private module (_header.py) drops its underscore (test_header.py). The files below
# check the project rather than one module.
PROJECT_TEST_FILES = {
    "test_layout.py": "code layout, imports, the layers contract, test file names",
    "test_docs.py": "README.md and docs/: the API table, the CLI listing, the bash blocks",
    "test_gpu_device_script.py": "benchmarks/gpu/run.sh",
    "test_benchmark_tools.py": "benchmarks/ tools: summarize and the target checks",
}
# Public modules without a test file of their own yet (their behaviour is tested through callers: pipelines
# through test_cli.py's `schedule --pipeline` tests and test_integrations_diffusers.py). The list may only
# shrink: a module listed here that gains its file fails the test below until it is removed from the list.
# A package's __init__ that only re-exports (no def or class of its own) needs no file.
MODULES_WITHOUT_OWN_TEST_FILE = {"integrations.pipelines", "integrations"}


def _module_test_names() -> dict[str, str]:
    """test file name -> dotted module (relative to boss_fast) for every module in the package."""
    names = {}
    for path in sorted((ROOT / "boss_fast").rglob("*.py")):
        parts = list(path.relative_to(ROOT / "boss_fast").with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
            tree = ast.parse(path.read_text())
            if not parts or not any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in tree.body):
                continue  # the package itself (boss_fast.__all__: test_docs.py) or a re-export only
        dotted = ".".join(parts)
        names["test_" + "_".join(p.lstrip("_") for p in parts) + ".py"] = dotted
    return names


def test_every_test_file_is_named_after_a_module_or_the_project_check_it_runs():
    modules = _module_test_names()
    files = sorted(p.name for p in (ROOT / "tests").glob("test_*.py"))
    stray = [f for f in files if f not in modules and f not in PROJECT_TEST_FILES]
    assert not stray, f"name these after the module they test (tests/test_<module>.py): {stray}"


def test_every_public_module_has_its_test_file():
    files = {p.name for p in (ROOT / "tests").glob("test_*.py")}
    public = {
        name: dotted
        for name, dotted in _module_test_names().items()
        if not any(part.startswith("_") for part in dotted.split("."))
    }
    missing = sorted(
        d for n, d in public.items() if n not in files and d not in MODULES_WITHOUT_OWN_TEST_FILE
    )
    assert not missing, f"public modules without tests/test_<module>.py: {missing}"
    stale = sorted(d for n, d in public.items() if n in files and d in MODULES_WITHOUT_OWN_TEST_FILE)
    assert not stale, f"these have their test file now; drop them from MODULES_WITHOUT_OWN_TEST_FILE: {stale}"
