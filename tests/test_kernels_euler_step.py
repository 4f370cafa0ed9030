"""euler_step: the Triton kernel (interpreted on CPU) and the torch backend against the reference, at
awkward sizes in each storage dtype; guidance; in place; the custom ops under torch.compile."""

from __future__ import annotations

import pytest
import torch

from boss_fast._backends import kernel_backend, kernel_backends
from boss_fast.kernels import euler_step, euler_step_reference
from boss_fast.ode import euler_update

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Awkward sizes: batch 1, 3, 67; odd channel counts; element counts that are not multiples of the 1024-wide
# block (67 * 3 * 7 = 1407 spans two programs, the second one masked).
SHAPES = [(1, 5), (3, 7, 11), (67, 3, 7), (3, 1, 8, 8)]
EPS32 = torch.finfo(torch.float32).eps
COMPILE_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"  # inductor's import


def backends() -> list[str]:
    return list(kernel_backends("cpu"))  # "triton" here only under TRITON_INTERPRET=1 (tests/conftest.py)


def bound(x: torch.Tensor, hv_abs: torch.Tensor, exact: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Allowed |result - exact| elementwise, exact being the float64 value from the same (rounded) inputs.

    The float32 arithmetic contributes a few float32 rounding errors of the terms: 4 eps32 (|x| + |h v|)
    (fused multiply-add or not, the guidance combine). Storage rounding contributes at most one ulp of
    |exact| plus one of |h v|, i.e. eps(dtype) (|exact| + |h v|): a full ulp rather than half because
    Triton 3.9's interpreter converts float32 to bfloat16 by truncation (2.0312 -> 2.0156, measured), and
    the |h v| term because torch's CPU float16 ``add(x, v, alpha=h)`` rounds h v before the sum (-2.92487
    came out -2.92383, one ulp off, measured). On a GPU the kernel rounds once, to nearest.
    """
    eps = torch.finfo(dtype).eps
    return eps * (exact.abs() + hv_abs) + 4 * EPS32 * (x.double().abs() + hv_abs)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_exact(backend, dtype, shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(dtype)
    v = (3 * torch.randn(shape, generator=gen)).to(dtype)
    h = 0.137
    got = euler_step(x, v, h, backend=backend)
    exact = x.double() + h * v.double()
    assert got.dtype == dtype and got.shape == x.shape
    assert ((got.double() - exact).abs() <= bound(x, abs(h) * v.double().abs(), exact, dtype)).all()


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES)
def test_guidance_combine(backend, dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 7, generator=gen).to(dtype)
    v = torch.randn(6, 5, 7, generator=gen).to(dtype)  # cat([v_uncond, v_cond])
    h, w = -0.25, 4.5
    got = euler_step(x, v, h, guidance=w, backend=backend)
    vu, vc = v[:3].double(), v[3:].double()
    exact = x.double() + h * (vu + w * (vc - vu))
    hv_abs = abs(h) * (vu.abs() + abs(w) * (vu.abs() + vc.abs()))
    assert ((got.double() - exact).abs() <= bound(x, hv_abs, exact, dtype)).all()


def test_guidance_weight_one_is_the_conditional_velocity():
    x, vc = torch.randn(3, 4), torch.randn(3, 4)
    v = torch.cat([torch.randn(3, 4), vc])
    for backend in backends():
        torch.testing.assert_close(euler_step(x, v, 0.5, guidance=1.0, backend=backend), x + 0.5 * vc)


@pytest.mark.parametrize("backend", backends())
def test_in_place_and_out(backend):
    x, v = torch.randn(67, 3, 7), torch.randn(67, 3, 7)
    expected = euler_step_reference(x, v, 0.3)
    y = x.clone()
    assert euler_step(y, v, 0.3, out=y, backend=backend) is y
    torch.testing.assert_close(y, expected, rtol=EPS32, atol=4 * EPS32 * 4)
    out = torch.empty_like(x)
    assert euler_step(x, v, 0.3, out=out, backend=backend) is out
    torch.testing.assert_close(out, expected, rtol=EPS32, atol=4 * EPS32 * 4)


def test_torch_backend_is_the_one_euler_step():
    x, v = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    assert torch.equal(euler_step(x, v, 0.3), euler_update(x, v, 0.3))  # float64: auto picks torch


@pytest.mark.filterwarnings(COMPILE_WARNING)
@pytest.mark.parametrize("backend", backends())
def test_custom_ops_compile_without_graph_break(backend):
    """fullgraph=True raises on any graph break; the fake functions give Inductor the shapes."""

    def step(x, v, vv):
        y = torch.ops.boss_fast.euler_step(x, v, 0.25, None, backend)
        torch.ops.boss_fast.euler_step_out(y, vv, 0.5, 2.0, backend, y)  # in place, guided
        return y

    x, v, vv = torch.randn(3, 5), torch.randn(3, 5), torch.randn(6, 5)
    got = torch.compile(step, fullgraph=True)(x, v, vv)
    expected = euler_step_reference(euler_step_reference(x, v, 0.25), vv, 0.5, 2.0)
    torch.testing.assert_close(got, expected)


def test_errors():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="v must have shape"):
        euler_step(x, torch.randn(3, 5), 0.1)
    with pytest.raises(ValueError, match="doubled batch"):
        euler_step(x, torch.randn(3, 4), 0.1, guidance=2.0)
    with pytest.raises(ValueError, match="dtype and device"):
        euler_step(x, torch.randn(3, 4, dtype=torch.float64), 0.1)
    with pytest.raises(TypeError, match="floating-point"):
        euler_step(x, torch.ones(3, 4, dtype=torch.int64), 0.1)
    with pytest.raises(ValueError, match="out must match"):
        euler_step(x, x, 0.1, out=torch.empty(2, 4))
    with pytest.raises(ValueError, match="finite"):
        euler_step(x, x, float("nan"))
    with pytest.raises(ValueError, match="unknown kernel backend"):
        euler_step(x, x, 0.1, backend="cuda")


def test_backend_resolution(monkeypatch):
    assert kernel_backend("auto", "cpu", torch.float32) == "torch"  # the interpreter is never auto-picked
    assert kernel_backend("torch", "cpu") == "torch"
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="not available here"):
        kernel_backend("triton", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="float64"):
        kernel_backend("triton", "cpu", torch.float64)


@pytest.mark.parametrize("backend", backends())
def test_triton_needs_contiguous(backend):
    x = torch.randn(4, 6)[:, ::2]
    if backend == "triton":
        with pytest.raises(ValueError, match="contiguous"):
            euler_step(x, x, 0.1, backend=backend)
    else:
        torch.testing.assert_close(euler_step(x, x, 0.5, backend=backend), 1.5 * x)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_kernel(dtype):
    x = torch.randn(67, 3, 7, device="cuda").to(dtype)
    v = torch.randn(67, 3, 7, device="cuda").to(dtype)
    got = euler_step(x, v, 0.3, backend="triton")
    exact = x.double() + 0.3 * v.double()
    assert ((got.double() - exact).abs() <= bound(x, 0.3 * v.double().abs(), exact, dtype)).all()


def test_auto_falls_back_on_cuda_with_one_warning(monkeypatch):
    """Without a usable triton, "auto" on CUDA warns once and uses torch."""
    from boss_fast import _backends

    monkeypatch.setattr(_backends, "_triton_unavailable", lambda device_type: "ImportError: no triton")
    monkeypatch.setattr(_backends, "_warned_kernel_fallback", False)
    with pytest.warns(RuntimeWarning, match="triton is unavailable"):
        assert kernel_backend("auto", "cuda", torch.float32) == "torch"
    assert kernel_backend("auto", "cuda", torch.float32) == "torch"  # once: a second warning would raise here
    with pytest.raises(RuntimeError, match="no triton"):
        kernel_backend("triton", "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_capture():
    """The ops capture into one CUDA graph; a replay reads the static inputs' new values."""
    x, v, vv = (torch.randn(*s, device="cuda") for s in ((3, 5), (3, 5), (6, 5)))
    out = torch.empty_like(x)
    torch.ops.boss_fast.euler_step_out(x, v, 0.25, None, "triton", out)  # warm-up: JIT outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = torch.ops.boss_fast.euler_step(x, v, 0.25, None, "triton")
        torch.ops.boss_fast.euler_step_out(y, vv, 0.5, 2.0, "triton", out)
    for seed in range(2):
        torch.manual_seed(seed)
        for t in (x, v, vv):
            t.copy_(torch.randn_like(t))
        graph.replay()
        expected = euler_step_reference(euler_step_reference(x, v, 0.25), vv, 0.5, 2.0)
        torch.testing.assert_close(out, expected)
