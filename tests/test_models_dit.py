"""boss_fast.models.dit."""

from __future__ import annotations

import pytest
import torch

from boss_fast.models import (
    DiT,
)


def _randomised(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """adaLN-Zero makes a fresh DiT output exactly 0; give every parameter random values instead."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return net.eval()


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(("size", "patch", "channels"), [(8, 2, 1), (8, 4, 3), (6, 3, 2), (4, 1, 1)])
def test_dit_shapes_and_seam(batch: int, size: int, patch: int, channels: int) -> None:
    net = _randomised(DiT(size, patch, channels, hidden=32, depth=2, heads=2))
    x = torch.randn(batch, channels, size, size)
    t = torch.rand(batch)
    out = net(x, t)
    assert out.shape == x.shape and out.dtype == x.dtype
    features = net.trunk(x, t)
    assert features.shape == (batch, (size // patch) ** 2, 32)
    assert type(net.head) is torch.nn.Linear and net.head.out_features == patch * patch * channels
    assert (net.patch_size, net.in_channels, net.input_size) == (patch, channels, size)
    torch.testing.assert_close(net.unpatchify(net.head(features)), out, rtol=0, atol=0)
    # A 0-d t is broadcast, and each sample depends only on its own row.
    torch.testing.assert_close(net(x, t[0]), net(x, t[0].expand(batch)))
    torch.testing.assert_close(net(x[-1:], t[-1:]), out[-1:], rtol=1e-5, atol=1e-6)


def test_dit_unpatchify_layout() -> None:
    # Documented layout: token n = i g + j, channel k = (pi p + pj) C + c -> pixel (c, i p + pi, j p + pj).
    net = DiT(input_size=6, patch_size=3, in_channels=2, hidden=16, depth=1, heads=2)
    g, p, c_n = 2, 3, 2
    tokens = torch.arange(g * g * p * p * c_n, dtype=torch.float32).reshape(1, g * g, p * p * c_n)
    img = net.unpatchify(tokens)[0]
    for i in range(g):
        for j in range(g):
            for pi in range(p):
                for pj in range(p):
                    for c in range(c_n):
                        assert img[c, i * p + pi, j * p + pj] == tokens[0, i * g + j, (pi * p + pj) * c_n + c]


def test_dit_fresh_is_zero_and_casts_dtype() -> None:
    net = DiT(8, 2, 1, hidden=32, depth=2, heads=4).eval()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    out = net(x, torch.rand(2, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert torch.count_nonzero(out) == 0  # adaLN-Zero


def test_dit_rejects_bad_config_and_inputs() -> None:
    with pytest.raises(ValueError, match="divisible by patch_size"):
        DiT(input_size=8, patch_size=3)
    with pytest.raises(ValueError, match="divisible by heads"):
        DiT(hidden=30, heads=4)
    net = DiT(8, 2, 1, hidden=32, depth=1, heads=4)
    with pytest.raises(ValueError, match="expects x of shape"):
        net(torch.zeros(2, 1, 8, 6), torch.zeros(2))
    with pytest.raises(ValueError, match="t must have shape"):
        net(torch.zeros(2, 1, 8, 8), torch.zeros(3))


def test_dit_latent_config_runs() -> None:
    # A latent-sized config (SD-VAE latents of 256^2 images: 32x32x4, patch 2 -> 256 tokens, DiT-S width 384).
    torch.manual_seed(0)
    net = _randomised(DiT(input_size=32, patch_size=2, in_channels=4, hidden=384, depth=2, heads=6))
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        features = net.trunk(x, torch.rand(2))
        out = net.unpatchify(net.head(features))
    assert features.shape == (2, 256, 384) and out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.slow
def test_dit_s2_latent_config_runs() -> None:
    net = DiT(input_size=32, patch_size=2, in_channels=4, hidden=384, depth=12, heads=6).eval()
    assert 30e6 < sum(p.numel() for p in net.parameters()) < 40e6  # DiT-S/2 is 33M parameters
    with torch.no_grad():
        assert net(torch.randn(2, 4, 32, 32), torch.rand(2)).shape == (2, 4, 32, 32)
