"""linear_euler: the fused head GEMM + Euler epilogue (Triton, interpreted on CPU; and torch) against a
float64 oracle at awkward sizes in each dtype, flat and through the DiT unpatchify layout; in place; the
custom ops under torch.compile(fullgraph=True); errors."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from boss_fast._backends import kernel_backends
from boss_fast.kernels import fused_head_default, linear_euler, linear_euler_reference, unpatchify
from boss_fast.models.dit import DiT

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
COMPILE_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"  # inductor's import


def backends() -> list[str]:
    return list(kernel_backends("cpu"))  # "triton" only under TRITON_INTERPRET=1 (tests/conftest.py)


def make(shape_f, n, x_shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    k = shape_f[-1]
    f = torch.randn(shape_f, generator=gen).to(dtype)
    w = (torch.randn(n, k, generator=gen) / k**0.5).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype)
    x = torch.randn(x_shape, generator=gen).to(dtype)
    return f, w, b, x


def oracle(f, w, b, x, h, patch_size):
    """float64 from the same rounded inputs: the exact answer up to float64 rounding."""
    v = f.double() @ w.double().T + b.double()
    v = v.reshape(x.shape) if patch_size is None else unpatchify(v, patch_size, *x.shape[1:])
    return x.double() + h * v


def check(got, f, w, b, x, h, patch_size):
    """flash-attention's criterion: the kernel's max error against the float64 oracle is at most twice the
    error of the plain PyTorch reference in the same precision, plus one storage ulp of the largest output
    (both accumulate in float32 and round to the storage dtype once; they differ in summation order, and
    Triton's interpreter rounds float32 -> bfloat16 by truncation, up to one ulp)."""
    exact = oracle(f, w, b, x, h, patch_size)
    ref = linear_euler_reference(f, w, b, x, h, patch_size)
    ref_err = (ref.double() - exact).abs().max()
    got_err = (got.double() - exact).abs().max()
    ulp = torch.finfo(x.dtype).eps * exact.abs().max()
    assert got.shape == x.shape and got.dtype == x.dtype
    assert got_err <= 2 * ref_err + ulp, (got_err.item(), ref_err.item(), ulp.item())


# (features shape, N): batch 1 / 3 / 67 rows; K not a multiple of the 32-wide K block; N odd, and N = 70 over
# two 64-wide N tiles; 67 rows over two 64-row M tiles.
FLAT = [((1, 33), 21), ((3, 64), 5), ((67, 40), 17), ((5, 16), 70), ((3, 4, 24), 9)]


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape_f", "n"), FLAT)
def test_flat(backend, dtype, shape_f, n):
    f, w, b, x = make(shape_f, n, (*shape_f[:-1], n), dtype)
    check(linear_euler(f, w, b, x, -0.37, backend=backend), f, w, b, x, -0.37, None)


# (B, C, H, W, p, K): the bundled digits shape, odd channel counts, batch 67, patch 1, a rectangular image.
PATCH = [
    (1, 1, 8, 8, 2, 64),
    (3, 3, 6, 6, 2, 24),
    (67, 1, 4, 4, 2, 16),
    (2, 5, 3, 3, 1, 40),
    (2, 3, 4, 6, 2, 20),
]


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("b", "c", "hh", "ww", "p", "k"), PATCH)
def test_patch(backend, dtype, b, c, hh, ww, p, k):
    f, w, bias, x = make((b, (hh // p) * (ww // p), k), p * p * c, (b, c, hh, ww), dtype)
    check(linear_euler(f, w, bias, x, 0.21, patch_size=p, backend=backend), f, w, bias, x, 0.21, p)


@pytest.mark.parametrize("backend", backends())
def test_dit_head_fused_equals_forward_plus_step(backend):
    """The DiT protocol: x + h * net(x, t) == linear_euler(trunk(x, t), head.weight, head.bias, x, h, p)."""
    torch.manual_seed(0)
    net = DiT(input_size=6, patch_size=2, in_channels=3, hidden=32, depth=1, heads=2).eval()
    torch.nn.init.normal_(net.head.weight, std=0.1)
    torch.nn.init.normal_(net.head.bias, std=0.1)
    x, t = torch.randn(3, 3, 6, 6), torch.rand(3)
    with torch.no_grad():
        features = net.trunk(x, t)
        expected = x + 0.3 * net(x, t)
        got = linear_euler(features, net.head.weight, net.head.bias, x, 0.3, patch_size=2, backend=backend)
        assert torch.equal(unpatchify(net.head(features), 2, 3, 6, 6), net.unpatchify(net.head(features)))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)  # float32 GEMM reassociation over K = 32


@pytest.mark.parametrize("backend", backends())
def test_in_place_and_no_bias(backend):
    f, w, _, x = make((3, 9, 24), 12, (3, 3, 6, 6), torch.float32)
    expected = oracle(f, w, torch.zeros(12), x, 0.5, 2).float()
    y = x.clone()
    assert linear_euler(f, w, None, y, 0.5, patch_size=2, out=y, backend=backend) is y
    torch.testing.assert_close(y, expected)


@pytest.mark.filterwarnings(COMPILE_WARNING)
@pytest.mark.parametrize("backend", backends())
def test_custom_ops_compile_without_graph_break(backend):
    """fullgraph=True raises on any graph break; the fake functions give Inductor the shapes."""

    def head_step(f, w, b, x):
        y = torch.ops.boss_fast.linear_euler(f, w, b, x, 0.25, 2, backend)
        torch.ops.boss_fast.linear_euler_out(f, w, b, y, 0.5, 2, backend, y)  # in place
        return y

    f, w, b, x = make((3, 9, 24), 12, (3, 3, 6, 6), torch.float32)
    got = torch.compile(head_step, fullgraph=True)(f, w, b, x)
    torch.testing.assert_close(got, oracle(f, w, b, x, 0.75, 2).float())


def test_errors():
    f, w, b, x = make((3, 9, 24), 12, (3, 3, 6, 6), torch.float32)
    with pytest.raises(ValueError, match="patch_size\\^2"):
        linear_euler(f, w[:8], b[:8], x, 0.1, patch_size=2)
    with pytest.raises(ValueError, match="features must be"):
        linear_euler(f[:, :4], w, b, x, 0.1, patch_size=2)
    with pytest.raises(ValueError, match="bias must be"):
        linear_euler(f, w, b[:3], x, 0.1, patch_size=2)
    with pytest.raises(ValueError, match="divisible"):
        linear_euler(f, w, b, torch.randn(3, 3, 5, 5), 0.1, patch_size=2)
    with pytest.raises(ValueError, match="x must have shape"):
        linear_euler(f, w, b, x, 0.1)
    with pytest.raises(ValueError, match="contiguous"):
        linear_euler(f, w, b, x.transpose(2, 3), 0.1, patch_size=2)
    with pytest.raises(ValueError, match="share a dtype"):
        linear_euler(f.double(), w, b, x, 0.1, patch_size=2)
    with pytest.raises(TypeError, match="floating-point"):
        linear_euler(f, w, b, x.long(), 0.1, patch_size=2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_kernel(dtype):
    f, w, b, x = (t.cuda() for t in make((67, 256, 384), 16, (67, 4, 32, 32), dtype))
    check(linear_euler(f, w, b, x, 0.21, patch_size=2, backend="triton"), f, w, b, x, 0.21, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_capture():
    """Both ops capture into one CUDA graph; a replay reads the static inputs' new values."""
    f, w, b, x = (t.cuda() for t in make((3, 16, 32), 12, (3, 3, 8, 8), torch.float32))
    out = torch.empty_like(x)
    torch.ops.boss_fast.linear_euler_out(f, w, b, x, 0.3, 2, "triton", out)  # warm-up: JIT outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = torch.ops.boss_fast.linear_euler(f, w, b, x, 0.3, 2, "triton")
        torch.ops.boss_fast.linear_euler_out(f, w, b, y, 0.3, 2, "triton", out)
    for seed in range(2):
        torch.manual_seed(seed)
        for t in (f, x):
            t.copy_(torch.randn_like(t))
        graph.replay()
        once = linear_euler_reference(f, w, b, x, 0.3, 2)
        torch.testing.assert_close(out, linear_euler_reference(f, w, b, once, 0.3, 2), rtol=1e-4, atol=1e-4)


# -- where the sampler fuses by default: the table of wins measured inside CUDA graphs ----------------------


def test_fused_head_default_takes_the_nearest_measured_batch(monkeypatch):
    module = importlib.import_module("boss_fast.kernels.linear_euler")  # the package's name is the function

    monkeypatch.setattr(module, "FUSED_HEAD_WINS", {"bfloat16": {1: True, 16: False, 64: True}})
    picks = {b: fused_head_default(b, torch.bfloat16) for b in (1, 3, 4, 5, 16, 31, 32, 33, 64, 4096)}
    # log2 distances: 4 ties 1 and 16 (2 each) and takes the smaller; 32 ties 16 and 64 likewise.
    assert picks == {1: True, 3: True, 4: True, 5: False, 16: False, 31: False, 32: False, 33: True,
                     64: True, 4096: True}  # fmt: skip
    assert fused_head_default(None, torch.bfloat16) is None  # depends on the batch
    assert fused_head_default(16, torch.float32) is True  # a dtype not measured keeps fusing
    monkeypatch.setattr(module, "FUSED_HEAD_WINS", {"float32": {1: False, 64: False}})
    assert fused_head_default(None, torch.float32) is False  # the same at every batch: known already


RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gpu"


def test_fused_head_wins_are_the_measured_ones():
    """The package's table is the one the latest device run measured (benchmarks/gpu/tune_head.py writes it
    as fused_default.json beside its figures), or empty while no run has measured one."""
    module = importlib.import_module("boss_fast.kernels.linear_euler")  # the package's name is the function

    measured = sorted(RESULTS.glob("*/fused_default.json"))
    if not measured:
        assert module.FUSED_HEAD_WINS == {}, "a table of wins without the measurement it came from"
        return
    table = json.loads(measured[-1].read_text())["table"]
    assert module.FUSED_HEAD_WINS == {d: {int(b): w for b, w in wins.items()} for d, wins in table.items()}
