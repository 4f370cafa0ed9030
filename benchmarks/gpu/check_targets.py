"""Check the GPU targets (issues 5 and 31) in the files ``benchmarks/gpu/run.sh`` writes.

    python benchmarks/gpu/check_targets.py env.txt FILE.json [FILE.json ...] > targets.md
    python benchmarks/gpu/check_targets.py --merge merged.json a.json b.json   # one JSON of all their cases

Each file is one of three kinds (its ``kind`` key; an unreadable one by its name): pytest-benchmark JSONs of
``benchmarks/test_bench_sampler.py`` ("bench"), ``tune_head.py``'s ``fused_head.json`` ("fused_head") and
``production.py``'s ``production.json`` ("production"). The targets of a kind are checked when a file of that
kind is given, so each call checks what it measured and all the files together check everything:

- bench: cuda_graph >= 3x eager at batch 1 (every K, both bundled-size DiTs) and within 1.3x of the sum of
  its kernels' device times; compile_graph at least as fast as the faster plain cuda_graph (fused or not) at
  batch 16;
- fused_head: the fused head (default tiles) >= 1.2x the unfused GEMM + update wherever the table of wins
  makes it the default, timed inside CUDA graphs;
- production: the short search's peak device memory within 10% of docs/search_memory.md's law (beside one
  model call, measured apart) at the SD3-1024 shape, every store; per-call times of both transformers at
  batch 1, 4 and 8 at 1024^2.

Prints a markdown report; exits 1 when a target is missed or a figure is absent. A missing or unreadable JSON
(a step cut short) is reported as a miss, as is every target without its figures (no CUDA device).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KINDS = ("bench", "fused_head", "production")
CUDA_CASE = "test_cuda_graph"  # a batch-16 group without any graph case ran on CPU: nothing to compare


def _medians(bench: dict) -> dict[tuple[str, str], dict]:
    """(group, test name) -> {"median": s, "extra": extra_info}."""
    return {
        (b["group"], b["name"]): {"median": b["stats"]["median"], "extra": b.get("extra_info", {})}
        for b in bench["benchmarks"]
    }


def _check(rows: list[str], ok: bool, text: str) -> bool:
    rows.append(f"| {'PASS' if ok else 'MISS'} | {text} |")
    return ok


def _cuda_graph_b1(rows: list[str], group: str, cases: dict, base: dict) -> bool:
    """cuda_graph >= 3x eager at batch 1, and within 1.3x of its kernels' device time."""
    ok = True
    for name, v in cases.items():
        if not name.startswith("test_cuda_graph"):
            continue
        speedup = base["median"] / v["median"]
        ok &= _check(rows, speedup >= 3.0, f"{group} {name}: {speedup:.1f}x eager (>= 3x)")
        floor = v["extra"].get("floor_s")
        if floor:
            ratio = v["median"] / floor
            ok &= _check(
                rows,
                ratio <= 1.3,
                f"{group} {name}: {v['median'] * 1e6:.1f} us = {ratio:.2f}x the kernels' "
                f"{floor * 1e6:.1f} us (<= 1.3x)",
            )
    return ok


def _compile_graph_b16(rows: list[str], group: str, cases: dict) -> bool:
    """compile_graph at least as fast as the faster plain cuda_graph at batch 16."""
    compiled = [v for n, v in cases.items() if n.startswith("test_compile_graph")]
    plain = {n: v for n, v in cases.items() if n.startswith("test_cuda_graph")}
    if not compiled or not plain:
        return _check(rows, False, f"{group}: compile_graph or cuda_graph figure missing")
    best_name = min(plain, key=lambda n: plain[n]["median"])
    ratio = plain[best_name]["median"] / compiled[0]["median"]
    text = (
        f"{group} compile_graph: {compiled[0]['median'] * 1e3:.3f} ms, {ratio:.2f}x the faster plain graph "
        f"({best_name}, {plain[best_name]['median'] * 1e3:.3f} ms) (>= 1x); compile "
        f"{compiled[0]['extra'].get('compile_s') or 0:.1f} s apart"
    )
    return _check(rows, ratio >= 1.0, text)


def _synced_fused_head(rows: list[str], group: str, cases: dict, base: dict | None) -> bool:
    """Issue 5's fused head at batch 64, timed one call at a time with a host sync (round one's figure)."""
    fused = cases.get("test_fused_head")
    if base is None or fused is None:
        return _check(rows, False, f"{group}: fused or unfused figure missing")
    speedup = base["median"] / fused["median"]
    ok = _check(rows, speedup >= 1.2, f"{group}: fused {speedup:.2f}x the unfused (>= 1.2x)")
    floor = fused["extra"]["floor_s"]
    ratio = fused["median"] / floor
    return ok & _check(
        rows,
        ratio <= 1.5,
        f"{group}: fused {fused['median'] * 1e6:.1f} us = {ratio:.2f}x the bandwidth floor "
        f"{floor * 1e6:.1f} us of {fused['extra']['bytes']} bytes (<= 1.5x)",
    )


def bench_targets(rows: list[str], bench: dict, why: str) -> bool:
    """The sampler targets of the benchmark JSONs; a target with no figure at all is a miss saying ``why``."""
    data = _medians(bench)
    ok = True
    for group in sorted({g for g, _ in data}):
        cases = {name: v for (g, name), v in data.items() if g == group}
        base = next((v for n, v in cases.items() if "baseline" in n), None)
        if group.startswith("sampler") and " B=1 " in group and base is not None:
            ok &= _cuda_graph_b1(rows, group, cases, base)
        if group.startswith("sampler") and " B=16 " in group and CUDA_CASE in "".join(cases):
            ok &= _compile_graph_b16(rows, group, cases)
        if group.startswith("fused head"):
            ok &= _synced_fused_head(rows, group, cases, base)
    if not any("test_cuda_graph" in row for row in rows):
        ok &= _check(rows, False, f"cuda_graph at batch 1: >= 3x eager, <= 1.3x its kernels: {why}")
    if not any("compile_graph" in row for row in rows):
        ok &= _check(rows, False, f"compile_graph at batch 16: >= the plain graph: {why}")
    return ok


def fused_targets(rows: list[str], doc: dict | None, why: str) -> bool:
    """>= 1.2x wherever the measured table makes the fused head the default."""
    if not doc or "cases" not in doc:
        detail = (doc or {}).get("error", why)
        return _check(rows, False, f"fused head in a CUDA graph, batch 1/16/64, fp32/bf16: {detail}")
    ok, default = True, []
    for dtype, row in doc["table"].items():
        for batch, wins in row.items():
            if wins:
                default.append((dtype, batch))
                speedup = doc["cases"][dtype][batch]["default_speedup"]
                ok &= _check(
                    rows, speedup >= 1.2, f"fused head {dtype} B={batch}: {speedup:.2f}x unfused (>= 1.2x)"
                )
    if not default:
        _check(rows, True, "fused head: faster than unfused at no measured case; the default nowhere")
    return ok


def production_targets(rows: list[str], doc: dict | None, why: str) -> bool:
    """Search memory within 10% of the law at SD3-1024, every store; per-call times of both shapes."""
    if not doc or doc.get("quick") or doc.get("device") != "cuda":
        detail = why if not doc or doc.get("device") != "cuda" else "quick shapes, not 1024^2"
        _check(rows, False, f"search memory within 10% of the law at SD3-1024: {detail}")
        return _check(rows, False, f"per-call times of SD3 and Flux at 1024^2, batch 1/4/8: {detail}")
    ok = True
    runs = doc["search"].get("sd3", [])
    if not runs:
        ok &= _check(rows, False, "search memory at SD3-1024: no search ran")
    for r in runs:
        ratio = r["peak_over_law"]
        text = (
            f"search memory SD3-1024 store {r['store']}: (peak - one call) / law = {ratio:.3f} "
            f"({r['peak_device_bytes'] / 2**20:.0f} - {r['call_peak_bytes'] / 2**20:.0f} MiB vs "
            f"{r['law_bytes'] / 2**20:.0f} MiB) (within 10%)"
        )
        ok &= _check(rows, abs(ratio - 1) <= 0.1, text)
    for name in ("sd3", "flux"):
        calls = doc["calls"].get(name, {})
        have = all(b in calls for b in ("1", "4", "8"))
        ms = ", ".join(f"B{b} {c['median_s'] * 1e3:.1f} ms" for b, c in calls.items())
        ok &= _check(rows, have, f"per-call times {name} 1024^2: {ms or 'none'} (batch 1, 4, 8)")
    return ok


def report(
    bench: dict,
    env: str,
    problems: list[str] | tuple[str, ...] = (),
    extras: dict[str, dict | None] | None = None,
    kinds: set[str] | frozenset[str] = frozenset({"bench"}),
) -> tuple[str, bool]:
    """The markdown report and whether every target of ``kinds`` was met; each of ``problems`` (an input that
    could not be read) is a miss."""
    extras = extras or {}
    rows = ["| result | target and figures |", "|---|---|"]
    all_ok = not problems
    for problem in problems:
        _check(rows, False, problem)
    why = "no GPU figures" + (": no CUDA device" if "NO CUDA DEVICE" in env else " in the input")
    if "bench" in kinds:
        all_ok &= bench_targets(rows, bench, why)
    if "fused_head" in kinds:
        all_ok &= fused_targets(rows, extras.get("fused_head"), why)
    if "production" in kinds:
        all_ok &= production_targets(rows, extras.get("production"), why)
    table = "\n".join(rows)
    medians = "\n".join(
        f"| {g} | {n} | {v['median'] * 1e3:.3f} | {v['extra'].get('compile_s') or ''} |"
        for (g, n), v in sorted(_medians(bench).items())
    )
    text = (
        f"# boss_fast on GPU: targets\n\n```\n{env.strip()}\n```\n\n{table}\n\n"
        f"## Medians\n\n| group | case | median ms | compile s |\n|---|---|---|---|\n{medians}\n"
    )
    return text, all_ok


def load(paths: list[str]) -> tuple[dict, list[str]]:
    """Every case of the pytest-benchmark JSONs ``paths`` in one dict (the first readable file's machine and
    commit info), and one problem line per file that is missing or unreadable."""
    merged: dict = {"benchmarks": []}
    problems = []
    for path in paths:
        try:
            bench = json.loads(Path(path).read_text())
            cases = bench["benchmarks"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            problems.append(f"{path}: no figures ({type(err).__name__}: {err}); was its step cut short?")
            continue
        if len(merged) == 1:
            merged.update({k: v for k, v in bench.items() if k != "benchmarks"})
        merged["benchmarks"].extend(cases)
    return merged, problems


def _kind(path: str, doc: object) -> str:
    """A file's kind: its ``kind`` key, else (unreadable, or a benchmark JSON) by its name."""
    if isinstance(doc, dict) and doc.get("kind") in KINDS:
        return doc["kind"]
    name = Path(path).name
    return next((k for k in ("fused_head", "production") if k in name), "bench")


def load_all(paths: list[str]) -> tuple[dict, dict[str, dict | None], list[str], set[str]]:
    """The merged benchmark cases, {kind: document} of the other kinds, the problems, and the kinds given."""
    extras: dict[str, dict | None] = {}
    bench_paths, problems, kinds = [], [], set()
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            doc = None
            err_text = f"{type(err).__name__}: {err}"
        kind = _kind(path, doc)
        kinds.add(kind)
        if kind == "bench":
            bench_paths.append(path)
        elif doc is None:
            problems.append(f"{path}: no figures ({err_text}); was its step cut short?")
            extras.setdefault(kind, None)
        else:
            extras[kind] = doc
    bench, bench_problems = load(bench_paths)
    return bench, extras, bench_problems + problems, kinds


def merge(out: str, paths: list[str]) -> None:
    """Write the merged cases of ``paths`` to ``out`` through a temporary name (a reader never sees half)."""
    merged, problems = load(paths)
    for problem in problems:
        print(problem, file=sys.stderr)
    tmp = Path(f"{out}.tmp")
    tmp.write_text(json.dumps(merged, indent=1))
    tmp.replace(out)


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[1] == "--merge":
        merge(argv[2], argv[3:])
        return 0
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    env_path = Path(argv[1])
    env = env_path.read_text() if env_path.is_file() else f"{env_path}: missing"
    bench, extras, problems, kinds = load_all(argv[2:])
    text, ok = report(bench, env, problems, extras, kinds)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
