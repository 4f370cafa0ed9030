"""What ``benchmarks/gpu/run.sh`` must leave when it runs on a machine without a CUDA device (the stand-in).

    python benchmarks/gpu/standin_check.py OUT   # OUT holds first/ ("correctness production") and figures/

Every step ran (none skipped for time, none failed) except the targets, which must be written with every
target missed because there is no CUDA device; the GPU tests were collected and skipped with a reason; the
CPU tests passed; diffusers came from the carried wheels; the production figures (both transformers, every
batch, every store) and the benchmark JSON exist; each command left at most 8 files of at most 16 MiB (what
the device machine returns). Prints one line per check; exits 1 when one fails.
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


def _targets_all_missed(out: Path) -> list[str]:
    """The targets step failed, and every target in targets.md is a miss for want of a CUDA device."""
    states = [state for name, state in _summary(out).items() if name.startswith("targets")]
    problems = (
        [] if states and set(states) == {"FAIL"} else [f"targets: {states}, expected FAIL (all missed)"]
    )
    lines = (out / "targets.md").read_text().splitlines()
    passed = [line for line in lines if line.startswith("| PASS")]
    misses = [line for line in lines if line.startswith("| MISS")]
    if passed or len(misses) < 2 or not all("no CUDA device" in line for line in misses):
        problems.append(f"targets.md: {len(passed)} PASS, misses {misses}")
    return problems


def _steps_ok(out: Path, least: int) -> list[str]:
    steps = _summary(out)
    problems = [
        f"step {n}: {state}" for n, state in steps.items() if state != "ok" and not n.startswith("targets")
    ]
    if len(steps) < least:
        problems.append(f"only {len(steps)} steps ran: {steps}")
    return problems


def check_correctness(out: Path) -> list[str]:
    """Problems in the correctness steps' output."""
    problems = []
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


def check_production(out: Path) -> list[str]:
    """Problems in the production step's output: diffusers from the wheels, both models, every stage."""
    problems = []
    if not re.search(r"^diffusers \S+ \S*/site/diffusers/", (out / "log.txt").read_text(), re.M):
        problems.append("log.txt does not show diffusers imported from the carried wheels")
    doc = json.loads((out / "production.json").read_text())
    for name in ("sd3", "flux"):
        calls = doc["calls"].get(name, {})
        if sorted(calls) != ["1", "4", "8"] or not all(c["min_s"] > 0 for c in calls.values()):
            problems.append(f"production {name} calls: {calls}")
    stores = {name: [r["store"] for r in runs] for name, runs in doc["search"].items()}
    if stores != {"sd3": ["device", "host", "disk"], "flux": ["host"]} or doc["skipped"]:
        problems.append(f"production searches: {stores}, skipped {doc['skipped']}")
    runs = [r for rs in doc["search"].values() for r in rs]
    if not all(r["calls"] > 0 and r["floor_seconds"] > 0 and r["law_bytes"] > 0 for r in runs):
        problems.append(f"production search figures: {runs}")
    if sorted(doc.get("projection", {})) != ["flux", "sd3"] or doc["default_evaluations_per_noise"] <= 0:
        problems.append(f"production projection: {doc.get('projection')}")
    return problems


def check_first(out: Path) -> list[str]:
    """The first command: correctness, then production, then their targets."""
    return _steps_ok(out, 7) + check_correctness(out) + check_production(out) + _targets_all_missed(out)


def check_figures(out: Path) -> list[str]:
    """Problems in the figures command's output."""
    problems = _steps_ok(out, 5) + _targets_all_missed(out)
    bench = json.loads((out / "bench.json").read_text())["benchmarks"]
    names = {b["name"] for b in bench}
    if not any(n.startswith("test_baseline_eager[") and "B16-K4" in n for n in names):
        problems.append(
            f"bench.json holds {sorted(names)}: eager at batch 16 (compile_graph's group) expected"
        )
    if "no CUDA device" not in (out / "tune_head.md").read_text():
        problems.append("tune_head.md does not say no CUDA device")
    if "no CUDA device" not in json.loads((out / "fused_head.json").read_text()).get("error", ""):
        problems.append("fused_head.json does not say no CUDA device")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    root, failed = Path(argv[1]), False
    for call, check in (("first", check_first), ("figures", check_figures)):
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
