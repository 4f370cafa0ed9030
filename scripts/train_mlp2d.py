"""Train a bundled 2-D MLP velocity by rectified flow matching on an 8-Gaussian mixture
(``boss_fast.models.eight_gaussians``): ``mlp2d`` on the default mixture of std 0.2 (bundled as "gmm2d"),
``mlp2d_narrow`` on the narrow one of std 0.05 ("gmm2d_narrow"); weights in boss_fast/models/weights/.

Fresh data every step (the mixture is sampled, not a fixed data set), t ~ U(0, 1), Adam with cosine decay,
EMA of the weights (shipped). Because the exact velocity of the mixture is known, the script reports the
learned field's error against it. Seeded; well under a minute on 2 CPU cores.
Usage: ``python scripts/train_mlp2d.py [--model mlp2d|mlp2d_narrow] [--steps N]``.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch

from boss_fast.models._io import WEIGHTS_DIR, save_weights
from boss_fast.models.gmm import NARROW_STD, GaussianMixtureFlow, eight_gaussians
from boss_fast.models.mlp import MLPVelocity

SCRIPT = "scripts/train_mlp2d.py"
CONFIG: dict[str, int] = {"dim": 2, "hidden": 128, "depth": 3, "n_freqs": 8}
# name -> (mixture std, architecture). The narrow field changes on a time scale of about its std (0.05), so
# it gets two more Fourier frequencies of t (highest 2^9 pi).
MODELS: dict[str, tuple[float, dict[str, int]]] = {
    "mlp2d": (0.2, CONFIG),
    "mlp2d_narrow": (NARROW_STD, {**CONFIG, "n_freqs": 10}),
}


def pairs(flow: GaussianMixtureFlow, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """n flow-matching training triples: x_t (n, 2), t (n,), target x1 - x0 (n, 2), all float32."""
    x1 = flow.sample_data(n, generator)
    x0 = torch.randn(x1.shape, generator=generator)
    t = torch.rand(n, generator=generator)
    return t[:, None] * x1 + (1.0 - t[:, None]) * x0, t, x1 - x0


@torch.no_grad()
def velocity_error(model: MLPVelocity, flow: GaussianMixtureFlow, n: int, seed: int) -> tuple[float, float]:
    """(E|v_model - v_exact|^2, E|v_exact|^2) over x_t of the flow-matching distribution, t ~ U(0, 1)."""
    xt, t, _ = pairs(flow, n, torch.Generator().manual_seed(seed))
    exact = flow(xt, t)
    return (model(xt, t) - exact).square().sum(1).mean().item(), exact.square().sum(1).mean().item()


def train(
    flow: GaussianMixtureFlow,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    ema_decay: float,
    seed: int,
    config: dict[str, int] = CONFIG,
) -> MLPVelocity:
    """Train MLPVelocity(**config) on fresh samples of ``flow``'s data; return the EMA copy in eval mode."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = MLPVelocity(**config)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    for step in range(steps):
        xt, t, target = pairs(flow, batch_size, generator)
        loss = (model(xt, t) - target).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(ema_decay, (1.0 + step) / (10.0 + step))
            for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                p_ema.lerp_(p, 1.0 - decay)
    return ema.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp2d")
    parser.add_argument("--steps", type=int, default=12000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="default: the bundled weights file")
    args = parser.parse_args(argv)

    std, config = MODELS[args.model]
    out = args.out or WEIGHTS_DIR / f"{args.model}.safetensors"
    flow = eight_gaussians(std=std)
    start = time.perf_counter()
    ema = train(flow, steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                seed=args.seed, config=config)  # fmt: skip
    wall = time.perf_counter() - start
    err, scale = velocity_error(ema, flow, 100_000, seed=1234)
    print(f"trained {args.steps} steps in {wall:.1f} s; E|v - v_exact|^2 = {err:.4f} "
          f"({err / scale:.2%} of E|v_exact|^2 = {scale:.3f})")  # fmt: skip
    path = save_weights(ema, out, name=args.model, config=config,
                        metadata={"script": SCRIPT, "seed": args.seed, "steps": args.steps,
                                  "batch_size": args.batch_size, "lr": args.lr,
                                  "data": f"eight_gaussians(std={std})",
                                  "velocity_mse": f"{err:.5f}", "train_seconds": f"{wall:.1f}",
                                  "torch": torch.__version__})  # fmt: skip
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
