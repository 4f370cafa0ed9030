"""What ``benchmarks/gpu/run.sh`` must leave when it runs on a machine without a CUDA device (the stand-in).

    python benchmarks/gpu/standin_check.py OUT      # OUT holds correctness/ and figures/ from run.sh

Every step ran (none skipped for time, none failed) except the targets, which must be written with every
target missed because there is no CUDA device; the GPU tests were collected and skipped with a reason; the
CPU tests passed; the benchmarks and the search left their JSON; each call left at most 8 files of at most
16 MiB (what the device machine returns). Prints one line per check; exits 1 when one fails.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

MAX_FILES, MAX_BYTES = 8, 16 * 2**20


def _summary(out: Path) -> dict[str, str]:
    """{step name: "ok" | "FAIL" | "SKIP"} from a call's summary.txt."""
    steps = {}
    for line in (out / "summary.txt").read_text().splitlines():
        match = re.match(r"(ok|FAIL|SKIP)\s+(.*?)(?: \(|: \d+ s of| \(rc=|$)", line)
        if match:
            steps[match.group(2)] = match.group(1)
    return steps


def _pytest_counts(text: str) -> dict[str, int]:
    """{"passed": n, "skipped": n, ...} from pytest's last summary line."""
    last = [line for line in text.splitlines() if re.search(r"\d+ (passed|skipped|failed|error)", line)]
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", last[-1])} if last else {}


def check_files(out: Path) -> list[str]:
    """Problems with what a call returns: too many files, a file too large."""
    files = [p for p in out.rglob("*") if p.is_file()]
    problems = [f"{p.name}: {p.stat().st_size} bytes > 16 MiB" for p in files if p.stat().st_size > MAX_BYTES]
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files > {MAX_FILES}: {sorted(p.name for p in files)}")
    return problems


def check_correctness(out: Path) -> list[str]:
    """Problems in the correctness call's output."""
    problems = [f"step {name}: {state}" for name, state in _summary(out).items() if state != "ok"]
    if len(_summary(out)) < 4:
        problems.append(f"only {len(_summary(out))} steps ran: {_summary(out)}")
    if "NO CUDA DEVICE" not in (out / "env.txt").read_text():
        problems.append("env.txt does not say NO CUDA DEVICE")
    gpu = (out / "tests_gpu.txt").read_text()
    counts = _pytest_counts(gpu)
    if not counts.get("skipped") or set(counts) - {"skipped", "deselected"}:
        problems.append(f"GPU tests: {counts}, expected every one collected and skipped")
    reasons = re.findall(r"^SKIPPED \[\d+\] \S+: (.*)$", gpu, re.M)
    if not reasons or not all("CUDA" in r or "cuda" in r for r in reasons):
        problems.append(f"GPU tests skipped without a CUDA reason: {reasons}")
    counts = _pytest_counts((out / "tests_kernels.txt").read_text())
    if not counts.get("passed") or counts.get("failed") or counts.get("error") or counts.get("errors"):
        problems.append(f"kernel + sampler tests: {counts}")
    return problems


def check_figures(out: Path) -> list[str]:
    """Problems in the figures call's output."""
    steps = _summary(out)
    problems = [f"step {n}: {state}" for n, state in steps.items() if state != "ok" and n != "targets"]
    if steps.get("targets") != "FAIL":
        problems.append(f"targets: {steps.get('targets')}, expected FAIL (every target missed)")
    rows = [line for line in (out / "targets.md").read_text().splitlines() if line.startswith("| PASS")]
    misses = [line for line in (out / "targets.md").read_text().splitlines() if line.startswith("| MISS")]
    if rows or len(misses) < 2 or not all("no CUDA device" in line for line in misses):
        problems.append(f"targets.md: {len(rows)} PASS, misses {misses}")
    bench = json.loads((out / "bench.json").read_text())["benchmarks"]
    names = {b["name"].split("[")[0] for b in bench}
    if not {"test_baseline_eager", "test_compile"} <= names:
        problems.append(f"bench.json holds {sorted(names)}: eager and compile expected on CPU")
    if "no CUDA device" not in (out / "tune_head.md").read_text():
        problems.append("tune_head.md does not say no CUDA device")
    search = json.loads((out / "search.json").read_text())
    if not search["runs"] or not all(r["calls"] > 0 and r["floor_seconds"] > 0 for r in search["runs"]):
        problems.append(f"search.json: runs {search['runs']}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    root, failed = Path(argv[1]), False
    for call, check in (("correctness", check_correctness), ("figures", check_figures)):
        try:
            problems = check_files(root / call) + check(root / call)
        except (OSError, ValueError, KeyError) as err:  # a file the call must leave is absent or unreadable
            problems = [f"{type(err).__name__}: {err}"]
        for problem in problems:
            print(f"stand-in {call}: {problem}")
        summary = root / call / "summary.txt"
        print(f"stand-in {call}: {'FAILED' if problems else 'ok'}")
        print(summary.read_text() if summary.is_file() else f"{summary}: missing")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
