"""Sampler: every mode against bf.sample at awkward batch sizes and dtypes, the fused head (torch reference
and the Triton interpreter), auto's measurement, and the errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from boss_fast._backends import kernel_backends
from boss_fast.models import load_bundled
from boss_fast.models.dit import DiT
from boss_fast.sampler import FusedHeadModel, Sampler
from boss_fast.sampling import sample

COMPILE_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"  # inductor's import
SCHED = [0.0, 0.25, 0.6, 1.0]  # K = 3, uneven steps
EPS32 = torch.finfo(torch.float32).eps


class TinyVelocity(nn.Module):
    """A small nonlinear velocity (B, 5) -> (B, 5) depending on t; compiles in about a second."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(5, 5)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(x)) * (1.0 + t[:, None])


@pytest.fixture(scope="module")
def digits_dit():
    return load_bundled("digits_dit")


def tiny_dit() -> DiT:
    torch.manual_seed(0)
    net = DiT(input_size=4, patch_size=2, in_channels=3, hidden=16, depth=1, heads=2).eval()
    nn.init.normal_(net.head.weight, std=0.2)  # adaLN-Zero starts at 0: give the head something to do
    nn.init.normal_(net.head.bias, std=0.2)
    return net.requires_grad_(False)


@pytest.mark.parametrize("batch", [1, 3, 67])
def test_eager_equals_sample_bitwise(digits_dit, batch):
    """Same model calls, same Euler step (the package's one), same float32 ops: identical bits."""
    noise = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(batch))
    sampler = Sampler(digits_dit, SCHED, mode="eager")
    assert torch.equal(sampler(noise), sample(digits_dit, noise, SCHED))
    assert sampler.resolved_mode == "eager" and sampler.num_steps == 3 and not sampler.fused


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_eager_other_dtypes(dtype):
    model = TinyVelocity()
    noise = torch.randn(3, 5).to(dtype)
    # float64 state with a float32 model is not a valid velocity(x, t) (output dtype differs): cast the model
    model = model.to(dtype) if dtype == torch.float64 else model
    net = model if dtype == torch.float64 else (lambda x, t: model(x.float(), t.float()).to(dtype))
    assert torch.equal(Sampler(net, SCHED, mode="eager", dtype=dtype)(noise), sample(net, noise, SCHED))


@pytest.mark.filterwarnings(COMPILE_WARNING)
@pytest.mark.parametrize("batch", [1, 3, 67])
def test_compile_equals_sample(batch):
    model = TinyVelocity()
    noise = torch.randn(batch, 5)
    sampler = Sampler(model, SCHED, mode="compile")
    got = sampler(noise)
    # Inductor may reorder float32 arithmetic (fused tanh, FMA): a few float32 ulps per step of |x| ~ 1.
    torch.testing.assert_close(got, sample(model, noise, SCHED), rtol=16 * EPS32, atol=16 * EPS32)
    assert sampler.resolved_mode == "compile" and sampler.compile_seconds > 0
    torch.testing.assert_close(sampler(noise), got, rtol=0, atol=0)  # steady state: same graph, same bits


@pytest.mark.filterwarnings(COMPILE_WARNING)
def test_compile_dit():
    net = tiny_dit()
    noise = torch.randn(3, 3, 4, 4)
    got = Sampler(net, SCHED, mode="compile")(noise)
    torch.testing.assert_close(got, sample(net, noise, SCHED), rtol=1e-5, atol=1e-5)  # K = 3 GEMM reorders


@pytest.mark.slow  # 20 s on 2 cores: Inductor over the DiT plus the interpreted kernel
@pytest.mark.filterwarnings(COMPILE_WARNING)
@pytest.mark.skipif("triton" not in kernel_backends("cpu"), reason="needs triton (interpreted here)")
def test_compile_fused_triton_dit():
    """The custom op inside the compiled K-step loop, writing the graph's input state in place."""
    net = tiny_dit()
    noise = torch.randn(3, 3, 4, 4)
    sampler = Sampler(net, SCHED, mode="compile", batch_size=3, fused=True, backend="triton")
    torch.testing.assert_close(sampler(noise), sample(net, noise, SCHED), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings(COMPILE_WARNING)
def test_auto_measures_on_cpu():
    model = TinyVelocity()
    sampler = Sampler(model, SCHED, batch_size=3)  # sample shape unknown: built at the first call
    noise = torch.randn(3, 5)
    got = sampler(noise)
    assert set(sampler.timings) == {"eager", "compile"}
    faster = min(sampler.timings, key=sampler.timings.get)
    assert sampler.resolved_mode == faster
    torch.testing.assert_close(got, sample(model, noise, SCHED), rtol=16 * EPS32, atol=16 * EPS32)


@pytest.mark.parametrize("backend", kernel_backends("cpu"))
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_head_equals_sample(backend, batch):
    net = tiny_dit()
    assert isinstance(net, FusedHeadModel)
    noise = torch.randn(batch, 3, 4, 4)
    sampler = Sampler(net, SCHED, mode="eager", batch_size=batch, fused=True, backend=backend)
    assert (
        sampler.fused and sampler.resolved_mode == "eager"
    )  # built at construction: the DiT knows its shape
    # One float32 GEMM over K = 16 reassociated per step, three steps: well inside 1e-5 at |x| ~ 1.
    torch.testing.assert_close(sampler(noise), sample(net, noise, SCHED), rtol=1e-5, atol=1e-5)


def test_fused_default_follows_the_backend(digits_dit):
    assert not Sampler(digits_dit, SCHED, mode="eager", backend="torch").fused  # nothing to gain on torch
    assert Sampler(digits_dit, SCHED, mode="eager", fused=True).fused


def test_results_are_not_overwritten(digits_dit):
    sampler = Sampler(digits_dit, SCHED, mode="eager")
    a = sampler(torch.zeros(2, 1, 8, 8))
    a_copy = a.clone()
    sampler(torch.ones(2, 1, 8, 8))
    assert torch.equal(a, a_copy)


def test_errors(digits_dit):
    with pytest.raises(ValueError, match="unknown mode"):
        Sampler(digits_dit, SCHED, mode="fast")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Sampler(digits_dit, SCHED, mode="cuda_graph", device="cpu")
    with pytest.raises(ValueError, match="strictly increasing"):
        Sampler(digits_dit, [0.0, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        Sampler(digits_dit, SCHED, batch_size=0)
    with pytest.raises(TypeError, match="floating torch.dtype"):
        Sampler(digits_dit, SCHED, dtype=torch.int32)
    with pytest.raises(TypeError, match="callable"):
        Sampler("dit", SCHED)
    with pytest.raises(ValueError, match="fused-head protocol"):
        Sampler(TinyVelocity(), SCHED, fused=True)
    with pytest.raises(RuntimeError, match="float64"):
        Sampler(digits_dit, SCHED, backend="triton", dtype=torch.float64)
    sampler = Sampler(digits_dit, SCHED, mode="eager", batch_size=3)
    with pytest.raises(ValueError, match="buffers are \\(3, 1, 8, 8\\)"):
        sampler(torch.randn(4, 1, 8, 8))
    with pytest.raises(ValueError, match="dtype torch.float64"):
        sampler(torch.randn(3, 1, 8, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        sampler([0.0])
    lazy = Sampler(TinyVelocity(), SCHED, mode="eager", batch_size=2)
    with pytest.raises(ValueError, match="batch_size is 2"):
        lazy(torch.randn(3, 5))
    with pytest.raises(ValueError, match="velocity returned shape"):
        Sampler(lambda x, t: x[:, :2], SCHED, mode="eager")(torch.randn(2, 5))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("batch", [1, 3, 67])
def test_cuda_graph_equals_sample(digits_dit, fused, batch):
    net = load_bundled("digits_dit", device="cuda")
    noise = torch.randn(batch, 1, 8, 8, device="cuda")
    sampler = Sampler(net, SCHED, mode="auto", batch_size=batch, fused=fused)
    assert sampler.resolved_mode == "cuda_graph"
    # cuBLAS may pick other GEMM kernels inside the graph, and the fused head reassociates its GEMM.
    torch.testing.assert_close(sampler(noise), sample(net, noise, SCHED), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_bfloat16():
    net = load_bundled("digits_dit", device="cuda", dtype=torch.bfloat16)
    noise = torch.randn(3, 1, 8, 8, device="cuda", dtype=torch.bfloat16)
    got = Sampler(net, SCHED, mode="cuda_graph", fused=True)(noise)
    # bfloat16 (eps 2^-7): one rounding per step of the state plus the head output's rounding in sample.
    eps = torch.finfo(torch.bfloat16).eps
    torch.testing.assert_close(got.float(), sample(net, noise, SCHED).float(), rtol=8 * eps, atol=8 * eps)
