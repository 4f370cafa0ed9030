"""The README matches the code: its API table, its CLI section, its shell blocks, and the collector set-up.

The README's ```python blocks themselves run as tests through pytest-markdown-docs (``--markdown-docs`` in
pyproject's ``addopts``) and the docstrings' ``>>>`` examples through pytest's doctest
(``--doctest-modules``); this file checks what those tools do not: names and subcommands, the ```bash blocks
(the collector runs only Python), that a block left out says why, and that a broken example makes the run
fail.
"""

from __future__ import annotations

import inspect
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

import boss_fast as bf
from boss_fast import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SHELL = ("bash", "sh", "shell", "console")
# Result containers: their example is the call that returns them (see its docstring).
RESULT_TYPES = {"BellmanPath", "GlobalTable", "StraightenStats", "StraighteningPairs", "Trajectory"}


def _section(title: str) -> str:
    """The README's ``## title`` section, up to the next ``## `` heading."""
    text = README.split(f"\n## {title}\n", 1)[1]
    return text.split("\n## ", 1)[0]


def _fences() -> list[tuple[list[str], str, str]]:
    """(info words, content, the text just above) of every fenced block, parsed as the collector parses."""
    tokens = MarkdownIt("commonmark").parse(README)
    found, above = [], ""
    for token in tokens:
        if token.type == "inline":
            above = token.content
        elif token.type == "fence":
            found.append((token.info.split(), token.content, above))
    return found


def _says_why(content: str, above: str) -> bool:
    first = content.lstrip().splitlines()[0] if content.strip() else ""
    return "not run here" in above.lower() or (first.startswith("#") and "not run here" in first.lower())


def _help(capsys, *argv: str) -> str:
    """What ``boss-fast ARGV --help`` prints: the CLI's own ``main``, which argparse exits with 0."""
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


# ------------------------------------------------------------------------------------------ API table


def test_api_table_lists_exactly_the_public_names():
    table = "\n".join(line for line in _section("API").splitlines() if line.startswith("|"))
    listed = set(re.findall(r"\bbf\.([A-Za-z_]\w*)", table))
    public = set(bf.__all__)
    assert not public - listed, f"in boss_fast.__all__ but not in the README's API table: {public - listed}"
    assert not listed - public, f"in the README's API table but not in boss_fast.__all__: {listed - public}"


def test_api_table_submodule_names_exist():
    table = "\n".join(line for line in _section("API").splitlines() if line.startswith("|"))
    dotted = re.findall(r"`boss_fast\.((?:[a-z_]+\.)+)([A-Za-z_]\w*)", table)
    assert dotted, "the API table names no boss_fast.<module>.<name>: the pattern no longer matches it"
    for module, name in dotted:
        mod = __import__(f"boss_fast.{module.rstrip('.')}", fromlist=[name])
        assert name in getattr(mod, "__all__", dir(mod)), f"boss_fast.{module}{name} is not public"


# ------------------------------------------------------------------------------------------ CLI


def _subcommands(capsys) -> set[str]:
    match = re.search(r"\{([\w,-]+)\}", _help(capsys))
    assert match, "boss-fast --help lists no {subcommands}"
    return set(match.group(1).split(","))


def _cli_mentions(text: str) -> list[list[str]]:
    """Every ``boss-fast ...`` command in ``text`` (fenced lines and inline code), as words."""
    lines = re.findall(r"^boss-fast [^\n]*", text, re.M) + re.findall(r"`(boss-fast [^`]*)`", text)
    return [line.split() for line in lines]


def test_cli_section_lists_exactly_the_subcommands(capsys):
    mentioned = {words[1] for words in _cli_mentions(_section("CLI"))}
    real = _subcommands(capsys)
    assert not real - mentioned, (
        f"boss-fast --help's subcommands missing from the CLI section: {real - mentioned}"
    )
    assert not mentioned - real, f"the CLI section names subcommands boss-fast lacks: {mentioned - real}"


def test_every_boss_fast_command_in_the_readme_has_its_subcommand_and_flags(capsys):
    real = _subcommands(capsys)
    flags = {sub: set(re.findall(r"(--[\w-]+)", _help(capsys, sub))) for sub in real}
    for words in _cli_mentions(README):
        sub = words[1]
        if sub.startswith("-"):  # `boss-fast --help` itself
            continue
        assert sub in real, f"README: `{' '.join(words)}`: boss-fast has no subcommand {sub!r}"
        unknown = {w.strip("[]") for w in words if w.strip("[]").startswith("--")} - flags[sub]
        assert not unknown, f"README: `{' '.join(words)}`: boss-fast {sub} has no {unknown}"


# ------------------------------------------------------------------------------------------ blocks


def test_every_block_left_out_says_why():
    for info, content, above in _fences():
        if info[:1] and info[0] in ("python", *SHELL) and "notest" in info[1:]:
            assert _says_why(content, above), f"a `notest` block does not say why it is not run:\n{content}"


def test_python_blocks_left_out_name_the_test_that_runs_their_calls():
    for info, content, above in _fences():
        if info[:1] == ["python"] and "notest" in info[1:]:
            named = re.findall(r"tests/test_\w+\.py", above)
            assert named, f"a `python notest` block names no test running the same calls:\n{content}"
            for path in named:
                assert (ROOT / path).is_file(), f"the README names {path}, which does not exist"


def test_shell_blocks_run_as_written(tmp_path, monkeypatch, readme_size, capsys):
    """Every line of a ```bash block not marked `notest` runs, in order, in one folder: `boss-fast` lines
    through the CLI's own ``main`` (in this process, so the README size switch applies)."""
    monkeypatch.chdir(tmp_path)
    ran = 0
    for info, content, _ in _fences():
        if not info or info[0] not in SHELL or "notest" in info[1:]:
            continue
        for line in content.splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            assert words[0] == "boss-fast", f"run `{line}` here, or mark its block `notest` with a reason"
            assert cli.main(words[1:]) == 0, f"`{line}` failed: {capsys.readouterr().err}"
            for flag in ("--out", "--png"):
                if flag in words:
                    assert (tmp_path / words[words.index(flag) + 1]).is_file(), f"`{line}` wrote no {flag}"
            ran += 1
    assert ran >= 3, f"only {ran} shell lines of the README ran"


# ------------------------------------------------------------------------------------------ docstrings


def test_every_public_call_has_a_docstring_example():
    missing = [
        name
        for name in bf.__all__
        if name not in RESULT_TYPES and ">>>" not in (inspect.getdoc(getattr(bf, name)) or "")
    ]
    assert not missing, f"public names whose docstring has no >>> example: {missing}"


# ------------------------------------------------------------------------------------------ the collector


def test_the_collector_fails_a_broken_example_and_passes_a_working_one(tmp_path):
    """With this project's pytest configuration (pyproject.toml), a README-like file whose example raises
    makes the run fail, a working one passes, a `notest` block is not run, and a docstring example whose
    output changed fails too."""
    (tmp_path / "good.md").write_text("```python\nimport math\nassert math.sqrt(4) == 2\n```\n")
    (tmp_path / "bad.md").write_text(
        "```python\nimport math\nmath.sqrt(-1)\n```\n\n```python notest\nraise SystemExit(3)\n```\n"
    )
    (tmp_path / "mod.py").write_text(
        textwrap.dedent('''
            def twice(x):
                """
                >>> twice(2)
                5
                """
                return 2 * x
        ''')
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path)]
        + ["-p", "no:cacheprovider", "-q", "-rA", "good.md", "bad.md", "mod.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert re.search(r"PASSED good\.md::\S+", out), out
    assert re.search(r"FAILED bad\.md::\S+.*", out) and "math domain error" in out, out
    assert re.search(r"FAILED mod\.py::mod\.twice", out), out
    assert "2 failed, 1 passed" in out, out
