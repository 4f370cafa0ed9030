"""The cost of the Sampler's final finiteness check (one reduction and one host read per call).

The same sampler is built twice, ``check_finite=False`` (the baseline) and ``True`` (the default), and the two
are called alternately, round after round, so both see the same machine load (the figures in
benchmarks/results were taken on a shared machine); the ratio is the median of the per-round ratios checked /
unchecked, and the absolute cost the median per-round difference. Cases: batch 1 and 64 on the bundled digits
DiT (1x8x8, K = 4) and on the cheapest possible model (``-x`` on (B, 2), K = 4: the worst case for the
ratio), eager (``--modes eager compile`` adds the compiled loop). The per-step metadata check of the model's
output (``check_velocity_output``) is timed the same way against a no-op call with the same arguments: the
eager loop makes one per model evaluation, compile and CUDA graphs only when tracing or capturing.

    PYTHONPATH=. python benchmarks/sampler_checks.py --out benchmarks/results

writes ``sampler_checks_<device>.json`` and ``sampler_checks_<device>.table.md`` there (the table of
benchmarks/results/sampler_checks_cpu.md; ``--device cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from boss_fast._validation import check_velocity_output
from boss_fast.models import DIGITS_SHAPE, load_bundled
from boss_fast.sampler import Sampler

SCHED = [0.0, 0.25, 0.5, 0.75, 1.0]  # K = 4


def _negate(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return -x


def _seconds(fn: Callable[[], object], device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _paired(a: Callable[[], object], b: Callable[[], object], device: torch.device, rounds: int) -> dict:
    """Medians of a (baseline) and b, called alternately after a warm-up; per-round ratio and difference."""
    for _ in range(3):
        a(), b()
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(_seconds(a, device))
        tb.append(_seconds(b, device))
    return {
        "baseline_s": statistics.median(ta),
        "checked_s": statistics.median(tb),
        "ratio": statistics.median(y / x for x, y in zip(ta, tb, strict=True)),
        "extra_s": statistics.median(y - x for x, y in zip(ta, tb, strict=True)),
    }


def finite_check(
    model: object, shape: tuple, batch: int, mode: str, device: torch.device, rounds: int
) -> dict:
    noise = torch.randn(batch, *shape, device=device)
    plain = Sampler(model, SCHED, mode=mode, batch_size=batch, device=device, check_finite=False)
    checked = Sampler(model, SCHED, mode=mode, batch_size=batch, device=device, check_finite=True)
    return _paired(lambda: plain(noise), lambda: checked(noise), device, rounds)


def metadata_check(device: torch.device, rounds: int) -> dict:
    x = torch.zeros(64, 1, 8, 8, device=device)
    v = torch.ones_like(x)

    def noop(v: object, x: torch.Tensor, t: float, step: int) -> object:
        return v

    def many(fn: Callable) -> Callable[[], None]:
        return lambda: [fn(v, x, 0.5, 2) for _ in range(1000)]

    out = _paired(many(noop), many(check_velocity_output), device, rounds)
    return {k: v / 1000 if k.endswith("_s") else v for k, v in out.items()}  # per call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", nargs="+", default=["eager"])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    digits_dit = load_bundled("digits_dit", device=device)
    models = {"digits_dit": (digits_dit, DIGITS_SHAPE), "negate": (_negate, (2,))}
    rows = []
    for name, (model, shape) in models.items():
        for batch in (1, 64):
            for mode in args.modes:
                row = finite_check(model, shape, batch, mode, device, args.rounds)
                rows.append({"model": name, "batch": batch, "mode": mode, **row})
                print(rows[-1], flush=True)
    meta = metadata_check(device, args.rounds)
    print(meta)
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()}
    info.update(torch=torch.__version__, python=platform.python_version(), rounds=args.rounds)
    info.update(threads=torch.get_num_threads())
    tag = device.type
    with open(os.path.join(args.out, f"sampler_checks_{tag}.json"), "w") as f:
        json.dump({"info": info, "finite_check": rows, "metadata_check": meta}, f, indent=1)
    lines = [
        "| model | B | mode | check_finite=False | True | ratio (median per round) | extra per call |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['mode']} | {r['baseline_s'] * 1e3:.3f} ms | "
            f"{r['checked_s'] * 1e3:.3f} ms | {r['ratio']:.3f}x | {r['extra_s'] * 1e6:.1f} us |"
        )
    lines.append("")
    lines.append(
        f"Metadata check per model output: {meta['checked_s'] * 1e6:.2f} us against a no-op call's "
        f"{meta['baseline_s'] * 1e6:.2f} us (extra {meta['extra_s'] * 1e6:.2f} us)."
    )
    with open(os.path.join(args.out, f"sampler_checks_{tag}.table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
