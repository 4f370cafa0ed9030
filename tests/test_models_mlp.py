"""boss_fast.models.mlp."""

from __future__ import annotations

import pytest
import torch

from boss_fast.models import (
    MLPVelocity,
)


def test_mlp_shapes_and_errors() -> None:
    net = MLPVelocity(dim=3, hidden=16, depth=2, n_freqs=4)
    out = net(torch.randn(5, 3, dtype=torch.float64), torch.rand(5))
    assert out.shape == (5, 3) and out.dtype == torch.float64
    with pytest.raises(ValueError):
        net(torch.randn(5, 2), torch.rand(5))
    with pytest.raises(ValueError):
        MLPVelocity(depth=0)
