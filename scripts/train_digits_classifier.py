"""Train the bundled 8x8 digits classifier (boss_fast/models/weights/digits_classifier.safetensors).

Its penultimate features define ``boss_fast.metrics.digits_fd``. Seeded and deterministic on CPU for a fixed
thread count; about 30 s on 2 CPU cores. Usage: ``python scripts/train_digits_classifier.py [--epochs N]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from boss_fast.models._io import WEIGHTS_DIR, save_weights
from boss_fast.models.classifier import DigitsClassifier
from boss_fast.models.data import SPLIT_SEED, digits

SCRIPT = "scripts/train_digits_classifier.py"


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image (B, 1, H, W) by up to ``max_shift`` pixels in each axis, filling with the
    background value -1. The digits are roughly centred but not exactly: shifts make the features depend
    on shape rather than position (held-out accuracy 98.65% without, 99.33% with, seed 0)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None])[:, :, None].expand(b, h, w)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, :].expand(b, h, w)
    batch = torch.arange(b)[:, None, None].expand(b, h, w)
    return padded[batch, 0, rows, cols][:, None]


@torch.no_grad()
def accuracy(model: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` (N, 1, 8, 8) whose argmax logit equals ``labels`` (N,)."""
    model.eval()
    return (model(images).argmax(dim=1) == labels).double().mean().item()


def train(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    max_shift: int = 1,
) -> DigitsClassifier:
    """AdamW with a cosine learning rate, cross-entropy, random shifts of up to ``max_shift`` pixels."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DigitsClassifier()
    steps_per_epoch = (len(images) + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(images), generator=generator)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            x = random_shift(images[idx], max_shift, generator) if max_shift > 0 else images[idx]
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shift", type=int, default=1, help="random translation augmentation, pixels")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR / "digits_classifier.safetensors")
    args = parser.parse_args(argv)

    train_x, train_y = digits("train")
    test_x, test_y = digits("test")
    start = time.perf_counter()
    model = train(
        train_x,
        train_y,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        max_shift=args.max_shift,
    )
    wall = time.perf_counter() - start
    train_acc, test_acc = accuracy(model, train_x, train_y), accuracy(model, test_x, test_y)
    print(
        f"trained in {wall:.1f} s; accuracy train {train_acc:.4f}, "
        f"held-out {test_acc:.4f} ({len(test_y)} images)"
    )
    path = save_weights(
        model,
        args.out,
        name="digits_classifier",
        config=model.config(),
        metadata={
            "script": SCRIPT,
            "seed": args.seed,
            "epochs": args.epochs,
            "max_shift": args.max_shift,
            "split_seed": SPLIT_SEED,
            "heldout_accuracy": f"{test_acc:.4f}",
            "train_seconds": f"{wall:.1f}",
            "torch": torch.__version__,
        },
    )
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
