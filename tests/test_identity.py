"""boss_fast._identity: every fingerprint and digest, pinned to the values files on disk already hold.

The pinned hex strings below were computed by the code BEFORE the digests moved into ``_identity``
(``_runtime.noise_digest``, ``demo._digest``, ``trajectories.model_fingerprint``, ``schedule.set_digest``,
``straighten._payload_sha256`` and ``straighten._cache_key`` at commit 42eea9c, run on these exact inputs).
They must never change: checkpoints, schedule sets, pair caches and the demo's reference cache written by
any earlier version record them, and a changed rule would refuse (or silently recompute) every such file.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boss_fast._identity import (
    arrays_digest,
    cache_key,
    checkpoint_model_key,
    content_digest,
    model_fingerprint,
    noise_digest,
    value_digest,
)
from boss_fast.models import load_bundled


def fixed_module() -> torch.nn.Module:
    """A module with parameters, buffers and plain attributes, every value set by a formula (no RNG)."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        for i, p in enumerate([*net.parameters(), *net.buffers()]):
            if p.is_floating_point():
                p.copy_(torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape) / 7 + i)
    return net


NOISE = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) / 7


def test_noise_digest_keeps_the_pre_refactor_values():
    assert noise_digest(NOISE) == "sha256:26f40bb29fc78238"  # checkpoint headers (16 digits)
    assert noise_digest(NOISE, length=32) == "sha256:26f40bb29fc782387011db207e621cd0"  # demo cache
    assert noise_digest(NOISE.flip(0)) != noise_digest(NOISE)  # same numbers, another order


def test_model_fingerprint_keeps_the_pre_refactor_values():
    assert model_fingerprint(fixed_module()) == "2379e0d5e5910ae9"
    assert model_fingerprint(fixed_module(), length=8) == "2379e0d5"
    # The bundled DiT: what every schedule searched on it records as its fingerprint.
    assert model_fingerprint(load_bundled("digits_dit")) == "7253b5ae5a997ca3"


def test_content_and_value_digests_keep_the_pre_refactor_values():
    doc = {"format": "x", "b": [1.5, 2, 0.1], "a": None, "n": {"z": 1, "y": "s"}, "sha256": "zz"}
    assert content_digest(doc) == "b75128befdfbe4ae4b443d81adf947681b7e826841a3a8470ee53573f4b17f8b"
    state = {
        "params": [torch.arange(3, dtype=torch.float32)],
        "step": 3,
        "losses": torch.tensor([0.5, 0.25], dtype=torch.float64),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999)}]},
    }
    # straighten's checkpoint checksum: value_digest of the state without its header
    assert value_digest(state) == "cad003d2cca7f0a442477fa49e7439c3197d38fa9880777d3f9f23565141ef14"


def test_cache_key_keeps_the_pre_refactor_values():
    grid, indices = np.linspace(0, 1, 5), np.array([0, 2, 4])
    parts = [model_fingerprint(fixed_module()), grid.tolist(), indices.tolist(), "euler", 8]
    assert cache_key(parts, NOISE) == "7b175fcac3c15f3ffd3a"
    assert cache_key(["velo", grid.tolist(), indices.tolist(), "heun", 4], NOISE) == "70e0fc048c03c13487fc"


def test_digests_see_what_they_claim_to_cover():
    doc = {"a": [1.0, 2.0], "sha256": "ignored"}
    assert content_digest(doc) == content_digest({"sha256": "other", "a": [1.0, 2.0]})
    assert content_digest(doc) != content_digest({"a": [1.0, 2.5]})
    base = {"w": torch.ones(2), "step": 1}
    assert value_digest(base) != value_digest({"w": torch.ones(2, dtype=torch.float64), "step": 1})
    assert value_digest(base) != value_digest({"w": torch.ones(1, 2), "step": 1})  # same bytes, other shape
    assert value_digest(base) != value_digest({"w": torch.ones(2), "step": 2})
    assert cache_key(["a"], NOISE) != cache_key(["a"], NOISE.double())
    assert cache_key(["a"], NOISE) != cache_key(["b"], NOISE)


def test_checkpoint_model_key():
    net = fixed_module()
    assert checkpoint_model_key(net, None, None) == ""  # no checkpoint: nothing recorded
    assert checkpoint_model_key(net, "c.npz", None) == model_fingerprint(net)
    assert checkpoint_model_key(net, "c.npz", "v2") == model_fingerprint(net) + "|v2"
    assert checkpoint_model_key(np.negative, "c.npz", "neg") == "key:neg"
    with pytest.raises(ValueError, match="checkpoint_key="):
        checkpoint_model_key(np.negative, "c.npz", None)
    with pytest.raises(ValueError, match="non-empty str"):
        checkpoint_model_key(net, "c.npz", "")


def test_model_fingerprint_tracks_weights():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    b = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    b.load_state_dict(a.state_dict())
    fp = model_fingerprint(a)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert model_fingerprint(b) == fp
    with torch.no_grad():
        b[0].weight[0, 0] += 1e-6
    assert model_fingerprint(b) != fp
    assert model_fingerprint(a.to(torch.bfloat16)) != fp


def test_model_fingerprint_covers_class_names_plain_and_tensor_attributes():
    class Scaled(torch.nn.Module):
        def __init__(self, scale, dims=(1, 2), table=None):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            torch.nn.init.zeros_(self.lin.weight)
            torch.nn.init.zeros_(self.lin.bias)
            self.scale, self.dims = scale, dims
            self.table = torch.zeros(3) if table is None else table
            self._private = scale  # private attributes are not covered

    class Renamed(Scaled):
        pass

    fp = model_fingerprint(Scaled(1.0))
    assert model_fingerprint(Scaled(1.0)) == fp
    assert model_fingerprint(Scaled(2.0)) != fp
    assert model_fingerprint(Scaled(1.0, dims=(1, 3))) != fp
    assert model_fingerprint(Scaled(1.0, table=torch.ones(3))) != fp
    assert model_fingerprint(Renamed(1.0)) != fp
    changed = Scaled(1.0)
    changed._private = 5.0
    assert model_fingerprint(changed) == fp
    assert model_fingerprint(Scaled(1.0).eval()) == fp  # the training flag is not covered


def test_arrays_digest_is_pinned_and_sees_names_dtypes_shapes_and_bytes():
    """The search checkpoints' ``payload_sha256`` (new with it; pinned from its first version on)."""
    arrays = {"count": np.asarray(7), "sums": np.arange(6.0).reshape(2, 3), "noise": np.asarray("sha256:00")}
    assert arrays_digest(arrays) == "sha256:17848bae44d1aa027c4e00e2fc7e7fef11878477c0261c7077061f7aaa89077c"
    assert arrays_digest(dict(reversed(arrays.items()))) == arrays_digest(arrays)
    for other in (
        {**arrays, "sums": arrays["sums"].reshape(3, 2)},  # same bytes, another shape
        {**arrays, "sums": arrays["sums"].astype(np.float32)},
        {**arrays, "count": np.asarray(8)},
        {"total": arrays["count"], "sums": arrays["sums"], "noise": arrays["noise"]},  # renamed
    ):
        assert arrays_digest(other) != arrays_digest(arrays)
