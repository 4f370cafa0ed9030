"""The straightening loss: one sample's error between the predicted velocity and its pair's target.

Losses (per sample; always a mean over the batch):

- ``"l2"``: the squared error, averaged (not summed) over the d = prod(x.shape[1:]) dimensions, so the
  learning rate does not depend on the image size (a sum would scale every gradient by d = 64 on digits).
- ``"pseudo_huber"``: ``sqrt(||e||^2 + c^2) - c`` with ||e|| the L2 norm over all dimensions and
  ``c = 0.00054 * sqrt(d)`` (Song & Dhariwal 2023; Lee et al. 2024): quadratic below c, linear above.
- ``normalize=True`` weights each sample's loss by ``1 / stopgrad(loss)`` (Simple ReFlow, Kim et al. 2025):
  every pair then contributes a unit-size gradient step, whatever its error.
"""

from __future__ import annotations

import math

import torch

__all__ = ["LOSSES", "PSEUDO_HUBER_C", "pair_loss"]

LOSSES: tuple[str, ...] = ("l2", "pseudo_huber")
# Song & Dhariwal (2023) use c = 0.00054 * sqrt(d) for images in [-1, 1]; the digits are in [-1, 1] too.
PSEUDO_HUBER_C = 0.00054


def pair_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    loss: str = "l2",
    *,
    normalize: bool = False,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Per-sample straightening loss (B,) between predicted and target velocities (B, ...).

    ``"l2"``: mean over dimensions of the squared error. ``"pseudo_huber"``: ``sqrt(||e||^2 + c^2) - c``,
    c = 0.00054 * sqrt(d). ``normalize``: multiply by ``1 / stopgrad(loss + eps)`` (Simple ReFlow), so each
    sample's value is about 1 and its gradient has unit scale.
    """
    err = (pred - target).flatten(1)
    if loss == "l2":
        per = err.square().mean(dim=1)
    elif loss == "pseudo_huber":
        c = PSEUDO_HUBER_C * math.sqrt(err.shape[1])
        per = torch.sqrt(err.square().sum(dim=1) + c * c) - c
    else:
        raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(map(repr, LOSSES))}")
    if normalize:
        per = per / (per.detach() + eps)
    return per
