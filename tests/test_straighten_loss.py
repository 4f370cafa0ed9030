"""The straightening loss (boss_fast.straighten.loss): l2, pseudo-Huber, Simple ReFlow's normalisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from boss_fast.straighten import pair_loss


def test_pair_loss_variants():
    pred, target = torch.zeros(3, 4), torch.tensor([[1.0] * 4, [2.0] * 4, [1e-4] * 4])
    np.testing.assert_allclose(pair_loss(pred, target, "l2").numpy(), [1.0, 4.0, 1e-8], rtol=1e-5)
    c = 0.00054 * math.sqrt(4)
    expected = [math.sqrt(4 * v * v + c * c) - c for v in (1.0, 2.0, 1e-4)]
    np.testing.assert_allclose(pair_loss(pred, target, "pseudo_huber").numpy(), expected, rtol=1e-5)
    # 1 / stopgrad(loss + 1e-8): about 1 wherever the loss is well above eps
    np.testing.assert_allclose(pair_loss(pred, target, "l2", normalize=True)[:2].numpy(), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown loss"):
        pair_loss(pred, target, "l1")
