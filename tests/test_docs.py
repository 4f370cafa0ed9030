"""The README and docs/ match the code: the API table (docs/api.md), the CLI page (docs/cli.md), every shell
block and quoted command, and the collector set-up.

The ```python blocks of README.md and docs/*.md themselves run as tests through pytest-markdown-docs
(``--markdown-docs`` in pyproject's ``addopts``; ``testpaths`` names README.md and docs) and the docstrings'
``>>>`` examples through pytest's doctest (``--doctest-modules``); this file checks what those tools do not:
names and subcommands, the ```bash blocks (the collector runs only Python), that a block left out says why,
that the documents are collected, and that a broken example makes the run fail.
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
# The documents whose examples run as tests: the README and every page of docs/.
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
API = ROOT / "docs" / "api.md"
CLI_PAGE = ROOT / "docs" / "cli.md"
SHELL = ("bash", "sh", "shell", "console")
# Result containers: their example is the call that returns them (see its docstring).
RESULT_TYPES = {"StraightenStats", "Trajectory"}


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _section(path: Path, title: str) -> str:
    """The ``## title`` section of the document at ``path``, up to the next ``## `` heading."""
    text = _read(path).split(f"\n## {title}\n", 1)[1]
    return text.split("\n## ", 1)[0]


def _fences(path: Path) -> list[tuple[list[str], str, str]]:
    """(info words, content, the text just above) of every fenced block of one document, parsed as the
    collector parses."""
    tokens = MarkdownIt("commonmark").parse(_read(path))
    found, above = [], ""
    for token in tokens:
        if token.type == "inline":
            above = token.content
        elif token.type == "fence":
            found.append((token.info.split(), token.content, above))
    return found


def _all_fences() -> list[tuple[Path, list[str], str, str]]:
    return [(path, *fence) for path in DOCUMENTS for fence in _fences(path)]


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


def _api_table() -> str:
    return "\n".join(line for line in _section(API, "The public names").splitlines() if line.startswith("|"))


def test_api_table_lists_exactly_the_public_names():
    listed = set(re.findall(r"\bbf\.([A-Za-z_]\w*)", _api_table()))
    public = set(bf.__all__)
    assert not public - listed, f"in boss_fast.__all__ but not in docs/api.md's table: {public - listed}"
    assert not listed - public, f"in docs/api.md's table but not in boss_fast.__all__: {listed - public}"


def test_api_table_submodule_names_exist():
    table = _api_table()
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


def test_cli_page_lists_exactly_the_subcommands(capsys):
    mentioned = {words[1] for words in _cli_mentions(_read(CLI_PAGE))}
    real = _subcommands(capsys)
    assert not real - mentioned, f"boss-fast --help's subcommands not in docs/cli.md: {real - mentioned}"
    assert not mentioned - real, f"docs/cli.md names subcommands boss-fast lacks: {mentioned - real}"


def test_every_boss_fast_command_in_the_documents_has_its_subcommand_and_flags(capsys):
    real = _subcommands(capsys)
    flags = {sub: set(re.findall(r"(--[\w-]+)", _help(capsys, sub))) for sub in real}
    for path in DOCUMENTS:
        for words in _cli_mentions(_read(path)):
            sub = words[1]
            if sub.startswith("-"):  # `boss-fast --help` itself
                continue
            where = f"{path.relative_to(ROOT)}: `{' '.join(words)}`"
            assert sub in real, f"{where}: boss-fast has no subcommand {sub!r}"
            unknown = {w.strip("[]") for w in words if w.strip("[]").startswith("--")} - flags[sub]
            assert not unknown, f"{where}: boss-fast {sub} has no {unknown}"


# ------------------------------------------------------------------------------------------ blocks


def test_every_block_left_out_says_why():
    for path, info, content, above in _all_fences():
        if info[:1] and info[0] in ("python", *SHELL) and "notest" in info[1:]:
            assert _says_why(content, above), f"{path.name}: a `notest` block does not say why:\n{content}"


def test_python_blocks_left_out_name_the_test_that_runs_their_calls():
    for path, info, content, above in _all_fences():
        if info[:1] == ["python"] and "notest" in info[1:]:
            named = re.findall(r"tests/test_\w+\.py", above)
            assert named, f"{path.name}: a `python notest` block names no test running its calls:\n{content}"
            for test_file in named:
                assert (ROOT / test_file).is_file(), f"{path.name} names {test_file}, which does not exist"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: path.name)
def test_shell_blocks_run_as_written(path, tmp_path, monkeypatch, readme_size, capsys):
    """Every line of a document's ```bash blocks not marked `notest` runs, in order, in one folder per
    document: `boss-fast` lines through the CLI's own ``main`` (in this process: the size switch applies)."""
    monkeypatch.chdir(tmp_path)
    for info, content, _ in _fences(path):
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


def test_shell_lines_run_where_expected():
    """The README's sigmas quickstart and the CLI page run their lines (a block marked `notest` by mistake
    would silently run nothing)."""
    for path, least in ((ROOT / "README.md", 3), (CLI_PAGE, 6)):
        lines = [
            line
            for info, content, _ in _fences(path)
            if info and info[0] in SHELL and "notest" not in info[1:]
            for line in content.splitlines()
            if shlex.split(line, comments=True)
        ]
        assert len(lines) >= least, f"only {len(lines)} shell lines of {path.name} run"


def test_every_document_is_collected(pytestconfig):
    """pyproject's testpaths collect README.md and docs/, so every page's ```python blocks run."""
    testpaths = pytestconfig.getini("testpaths")
    assert {"README.md", "docs"} <= set(testpaths), testpaths
    assert "--markdown-docs" in pytestconfig.getini("addopts"), pytestconfig.getini("addopts")


# ------------------------------------------------------------------------------------------ links


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_reach_a_file_and_a_heading():
    """Every relative link of the README and docs/ names a file that exists, and its #anchor one of its
    headings."""
    for path in DOCUMENTS:
        for target in re.findall(r"\]\(([^)\s]+)\)", _read(path)):
            if re.match(r"[a-z]+://", target):
                continue
            file_part, _, fragment = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            assert linked.exists(), f"{path.name} links {target}: no such file"
            if fragment:
                headings = re.findall(r"^#+ (.+)$", _read(linked), re.M)
                anchors = {_anchor(heading) for heading in headings}
                assert fragment in anchors, f"{path.name} links {target}: no such heading in {linked.name}"


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
