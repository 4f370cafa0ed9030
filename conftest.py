"""What the documents' examples and the docstring examples run in (collected by plain ``python -m pytest``).

pytest-markdown-docs runs every ```python block of README.md and docs/*.md (``--markdown-docs``) and pytest's
doctest runs every ``>>>`` example in ``boss_fast/`` (``--doctest-modules``); both are in ``addopts`` in
pyproject.toml. Each document's block runs in a fresh temporary folder (blocks write files such as
``digits.schedules.json``), and a block whose first line reads ``# extra: NAME`` is skipped when a
distribution of that extra is not installed.

Size switch (documented in docs/development.md): by default the documents' blocks, and their CLI lines run by
tests/test_docs.py (fixture ``readme_size``), run the calls in ``README_CAPS`` smaller (grids, noises,
training steps, the reference's tolerances, no compile in ``Sampler(mode="auto")``), so they take seconds
instead of minutes on a 2-core CI machine; ``BOSS_FAST_README_FULL=1`` runs them with the arguments as
written. The code is the document's in both cases: the caps wrap the ``boss_fast`` functions it calls, for the
duration of one test (monkeypatch undoes them).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import importlib.util
import inspect
import os
import re

import pytest
import torch

FULL_SIZE_ENV = "BOSS_FAST_README_FULL"

if not torch.cuda.is_available():
    # As tests/conftest.py: Triton reads this when boss_fast.kernels is first imported, which the doctests of
    # boss_fast/ (collected outside tests/) may do first.
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Modules that import an optional extra at their top: their doctests are not collected without it.
collect_ignore = [
    path
    for path, module in (
        ("boss_fast/integrations/diffusers.py", "diffusers"),
        ("boss_fast/integrations/flow_matching.py", "flow_matching"),
    )
    if importlib.util.find_spec(module) is None
]


def at_most(cap):
    """A size argument above ``cap`` runs as ``cap``."""
    return lambda value: (
        cap if isinstance(value, int) and not isinstance(value, bool) and value > cap else value
    )


def at_least(floor):
    """A tolerance below ``floor`` runs as ``floor``."""
    return lambda value: floor if isinstance(value, float) and value < floor else value


def first_rows(rows):
    """A noise batch runs as its first ``rows`` samples (for calls whose result has no batch dimension)."""
    return lambda value: value[:rows] if isinstance(value, torch.Tensor) else value


def instead_of(old, new):
    """``old`` runs as ``new``."""
    return lambda value: new if value == old else value


def capped_settings(name, **caps):
    """A settings object ``boss_fast.<name>`` (None: its defaults) runs with each named field capped."""

    def cap(value):
        # Imported here: importing boss_fast at the top would come before TRITON_INTERPRET is set.
        import boss_fast

        cls = getattr(boss_fast, name)
        settings = cls() if value is None else value
        if not isinstance(settings, cls):
            return value  # the call refuses it, as written
        return dataclasses.replace(settings, **{k: c(getattr(settings, k)) for k, c in caps.items()})

    return cap


# boss_fast name -> {argument: what a README block runs it with}. Grids are capped alike everywhere, so a
# schedule searched under the cap is on the grid `straighten` checks it against. Sampler's "auto" compiles
# and times both modes (tens of seconds on 2 cores; compile is tested in tests/test_sampler.py).
README_CAPS = {
    "optimal_schedules": {
        "settings": capped_settings("SearchSettings", grid=at_most(20), num_samples=at_most(16))
    },
    "straighten": {
        "settings": capped_settings(
            "StraightenSettings", grid=at_most(20), iters=at_most(10), num_pairs=at_most(16)
        )
    },
    "boss_fast.straighten:straightening_pairs": {"grid": at_most(20)},
    "cost_matrix": {"noise": first_rows(16)},
    "teacher_trajectory": {"noise": first_rows(16)},
    "reference_solution": {"rtol": at_least(1e-3), "atol": at_least(1e-3)},
    "Sampler": {"mode": instead_of("auto", "eager")},
}


def _capped(fn, caps):
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        for name, cap in caps.items():
            bound.arguments[name] = cap(bound.arguments[name])
        return fn(*bound.args, **bound.kwargs)

    return call


def _extra(source: str) -> str | None:
    first = source.lstrip("\n").splitlines()[0] if source.strip() else ""
    match = re.match(r"#\s*extra:\s*([\w-]+)", first)
    return match.group(1) if match else None


def _skip_without_extra(extra: str) -> None:
    """Skip unless every distribution the installed boss_fast lists for ``extra`` is installed."""
    marker = f'extra == "{extra}"'
    requirements = [r for r in importlib.metadata.requires("boss_fast") or [] if marker in r]
    if not requirements:
        pytest.fail(f"the block names the extra {extra!r}, which boss_fast does not define")
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"needs the {extra!r} extra ({name} is not installed)")


# Inductor's own import warns (torch 2.13); a README reader does not run with warnings as errors.
COMPILE_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("markdown-docs") is not None:
            item.add_marker(pytest.mark.filterwarnings(COMPILE_WARNING))


@pytest.fixture
def readme_size(monkeypatch):
    """The size switch: cap ``README_CAPS`` in ``boss_fast`` for one test (undone after it), unless
    ``BOSS_FAST_README_FULL=1``."""
    if os.environ.get(FULL_SIZE_ENV) == "1":
        return
    for key, caps in README_CAPS.items():  # "name" (on boss_fast) or "module:name" (a name outside __all__)
        module, _, name = key.rpartition(":")
        owner = importlib.import_module(module or "boss_fast")
        monkeypatch.setattr(owner, name, _capped(getattr(owner, name), caps))


@pytest.fixture(autouse=True)
def _readme_block(request):
    """For a README block only: a fresh working folder, its extra, and the size switch."""
    definition = getattr(request.node, "test_definition", None)
    if definition is None or request.node.get_closest_marker("markdown-docs") is None:
        return
    request.getfixturevalue("monkeypatch").chdir(request.getfixturevalue("tmp_path"))
    extra = _extra(definition.source)
    if extra is not None:
        _skip_without_extra(extra)
    request.getfixturevalue("readme_size")
