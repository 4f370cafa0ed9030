"""How converged the demo's dopri5 reference is: endpoints at several tolerances against a 1e-7 solve.

On 200 of the demo's held-out noises (seed 1) of the bundled digits DiT, ``reference_solution`` at rtol =
atol = 1e-3 .. 1e-7 (model evaluations counted); each endpoint set is compared with the 1e-7 one (RMSE over
all elements, and the largest per-sample RMSE), beside the smallest error the demo reports (uniform steps,
K = 10). One thread, so the figures do not depend on the machine's load.

    PYTHONPATH=. python benchmarks/reference_tolerance.py > benchmarks/results/reference_tolerance.md
"""

from __future__ import annotations

import time

import torch

import boss_fast as bf
from boss_fast.models import load_bundled

TOLERANCES = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3)


class Counted(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x, t)


@torch.no_grad()
def main() -> None:
    torch.set_num_threads(1)
    model = Counted(load_bundled("digits_dit"))
    noise = bf.seeded_noise((1, 8, 8), 0, 200, seed=1)
    ends, rows = {}, []
    for tol in TOLERANCES:
        model.calls, start = 0, time.perf_counter()
        ends[tol] = bf.reference_solution(model, noise, rtol=tol, atol=tol).double().reshape(len(noise), -1)
        rows.append((tol, model.calls, time.perf_counter() - start))
    best = ends[TOLERANCES[0]]
    uniform = bf.sample(model.model, noise, bf.uniform_grid(10)).double().reshape(len(noise), -1)
    print("# The dopri5 reference against a 1e-7 solve (digits DiT, 200 held-out noises, seed 1)\n")
    print("| rtol = atol | model evaluations | seconds (1 thread) | RMSE vs 1e-7 | largest per-sample RMSE |")
    print("|---:|---:|---:|---:|---:|")
    for tol, calls, seconds in rows:
        diff = ends[tol] - best
        print(
            f"| {tol:g} | {calls} | {seconds:.1f} | {float(diff.square().mean().sqrt()):.2e} | "
            f"{float(diff.square().mean(dim=1).sqrt().max()):.2e} |"
        )
    error = float((uniform - best).square().mean().sqrt())
    print(f"\nUniform steps, K = 10, RMSE vs the 1e-7 solve: {error:.4f}")


if __name__ == "__main__":
    main()
