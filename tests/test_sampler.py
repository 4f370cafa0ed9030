"""Sampler and TeacherRecorder: every mode against bf.sample / teacher_trajectory at awkward batch sizes and
dtypes, the fused head (torch reference and the Triton interpreter), what auto runs, and the errors."""

from __future__ import annotations

import copy
import importlib
import math
import re

import numpy as np
import pytest
import torch
from _helpers import DoubledVelocity, TinyVelocity, guided
from torch import nn

import boss_fast as bf
import boss_fast.sampler as sampler_module
from boss_fast._backends import kernel_backends
from boss_fast.models import load_bundled
from boss_fast.models.dit import DiT
from boss_fast.ode import sample
from boss_fast.sampler import Sampler, TeacherRecorder
from boss_fast.trajectories import teacher_trajectory

COMPILE_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"  # inductor's import
SCHED = [0.0, 0.25, 0.6, 1.0]  # K = 3, uneven steps
EPS32 = torch.finfo(torch.float32).eps


def head_calls(sampler: Sampler, head: nn.Linear, noise: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The sampler's result from ``noise`` and how many times a (steady-state) call ran the ``head`` module:
    the fused kernel reads the head's weight itself (0 calls), the plain path calls the model, and so the
    head, once per step. A first call builds the buffers (a checked model call) if construction did not."""
    sampler(noise)
    calls = []
    handle = head.register_forward_hook(lambda *args: calls.append(1))
    try:
        out = sampler(noise)
    finally:
        handle.remove()
    return out, len(calls)


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
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compile_reduced_precision(dtype):
    """Inductor computes reduced-precision chains in float32 and rounds at its outputs, sample rounds after
    every op: a couple of the dtype's ulps per step (measured: at most 1 eps over K = 3, relative to
    1 + |x|)."""
    model = TinyVelocity().to(dtype)
    noise = torch.randn(67, 5).to(dtype)
    got = Sampler(model, SCHED, mode="compile")(noise)
    tol = 2 * (len(SCHED) - 1) * torch.finfo(dtype).eps
    torch.testing.assert_close(got.float(), sample(model, noise, SCHED).float(), rtol=tol, atol=tol)


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
@pytest.mark.parametrize("faster", ["eager", "compile"])
def test_auto_runs_the_mode_measured_faster(monkeypatch, faster):
    """Whichever candidate the clock favours is the one every later call runs. The clock is faked (the
    real one cannot be steered); the runners are wrapped only to log which of them a call runs."""
    ran: list[str] = []

    def logged(make, mode):
        def make_logged(built):
            run = make(built)

            def logged_run():
                ran.append(mode)
                run()

            logged_run.mode = mode
            return logged_run

        return make_logged

    def clock(run, device):  # the candidate named `faster` takes 1 s, the other 2 s
        run()
        return 1.0 if run.mode == faster else 2.0

    monkeypatch.setattr(sampler_module, "_eager_runner", logged(sampler_module._eager_runner, "eager"))
    monkeypatch.setattr(
        sampler_module, "_compiled_runner", logged(sampler_module._compiled_runner, "compile")
    )
    monkeypatch.setattr(sampler_module, "_median_seconds", clock)
    model, noise = TinyVelocity(), torch.randn(3, 5)
    sampler = Sampler(
        model, SCHED, batch_size=3
    )  # sample shape unknown: built (and measured) at the first call
    sampler(noise)
    ran.clear()
    got = sampler(noise)
    assert ran == [faster] and sampler.resolved_mode == faster
    slower = {"eager": "compile", "compile": "eager"}[faster]
    assert sampler.timings == {faster: 1.0, slower: 2.0}
    torch.testing.assert_close(got, sample(model, noise, SCHED), rtol=16 * EPS32, atol=16 * EPS32)


@pytest.mark.filterwarnings(COMPILE_WARNING)
def test_auto_falls_back_to_eager_when_compile_fails(monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)
    model, noise = TinyVelocity(), torch.randn(3, 5)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no compiler here.*using eager"):
        sampler = Sampler(model, SCHED, batch_size=3)
        got = sampler(noise)
    assert sampler.resolved_mode == "eager" and torch.equal(got, sample(model, noise, SCHED))


@pytest.mark.parametrize("backend", kernel_backends("cpu"))
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_head_equals_sample(backend, batch):
    net = tiny_dit()
    noise = torch.randn(batch, 3, 4, 4)
    sampler = Sampler(net, SCHED, mode="eager", batch_size=batch, fused=True, backend=backend)
    got, calls = head_calls(sampler, net.head, noise)
    assert calls == 0  # the fused kernel ran: the head module was never called
    # One float32 GEMM over K = 16 reassociated per step, three steps: well inside 1e-5 at |x| ~ 1.
    torch.testing.assert_close(got, sample(net, noise, SCHED), rtol=1e-5, atol=1e-5)
    plain = Sampler(net, SCHED, mode="eager", batch_size=batch, fused=False, backend=backend)
    assert head_calls(plain, net.head, noise)[1] == len(SCHED) - 1  # negative control: once per step


def test_fused_head_found_through_getattr():
    """The head is found by plain attribute lookup, which reaches an nn.Module's submodules; a runtime
    Protocol's isinstance() does not from Python 3.12 on (inspect.getattr_static), and refused every DiT on
    the GPU machine's 3.12. The protocol is documentation only: isinstance on it is a TypeError, so it
    cannot creep back."""
    from boss_fast.sampler import FusedHeadModel

    class Wrapped(nn.Module):  # head, trunk, patch_size and sample_shape reached only through __getattr__
        fused_head = True

        def __init__(self):
            super().__init__()
            self.inner = tiny_dit()

        def __getattr__(self, name):
            if name in ("head", "trunk", "patch_size", "sample_shape"):
                return getattr(self._modules["inner"], name)
            return super().__getattr__(name)

        def forward(self, x, t):
            return self.inner(x, t)

    wrapped, noise = Wrapped(), torch.randn(2, 3, 4, 4)
    got, calls = head_calls(
        Sampler(wrapped, SCHED, mode="eager", backend="torch", fused=True), wrapped.inner.head, noise
    )
    assert calls == 0
    torch.testing.assert_close(got, sample(wrapped, noise, SCHED), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError):
        isinstance(tiny_dit(), FusedHeadModel)


@pytest.mark.skipif("triton" not in kernel_backends("cpu"), reason="needs triton (interpreted here)")
def test_fused_default_follows_the_measured_table(monkeypatch, digits_dit):
    """Where the table of measured wins says the fused head loses (here, as a stand-in measurement: float32
    at batch 1 and 2), the default is unfused; where it wins, fused; an explicit fused=True overrides it; a
    sampler whose batch size comes with the first noise decides then."""
    linear_euler_module = importlib.import_module("boss_fast.kernels.linear_euler")  # not the function

    monkeypatch.setattr(linear_euler_module, "FUSED_HEAD_WINS", {"float32": {1: False, 2: False, 16: True}})
    noise = torch.randn(1, 1, 8, 8)
    small = Sampler(digits_dit, SCHED, mode="eager", batch_size=1, backend="triton")
    assert small.fused is False and head_calls(small, digits_dit.head, noise)[1] == len(SCHED) - 1
    forced = Sampler(digits_dit, SCHED, mode="eager", batch_size=1, backend="triton", fused=True)
    assert forced.fused is True and head_calls(forced, digits_dit.head, noise)[1] == 0
    wide = Sampler(digits_dit, SCHED, mode="eager", backend="triton")
    assert wide.fused is None  # depends on the batch, not known yet
    wide_noise = torch.randn(9, 1, 8, 8)
    got, calls = head_calls(wide, digits_dit.head, wide_noise)
    assert wide.fused is True and calls == 0  # 9 rows: nearest measured batch 16 (log2), a win
    torch.testing.assert_close(got, sample(digits_dit, wide_noise, SCHED), rtol=1e-5, atol=1e-5)


def test_fused_default_follows_the_backend(digits_dit):
    """The default fuses only where it pays: not on the torch backend, not with guidance."""
    noise = torch.randn(2, 1, 8, 8)
    plain = Sampler(digits_dit, SCHED, mode="eager", backend="torch")  # nothing to gain on torch
    assert head_calls(plain, digits_dit.head, noise)[1] == len(SCHED) - 1
    if "triton" in kernel_backends("cpu"):  # the interpreter stands in for the GPU here
        fused = Sampler(digits_dit, SCHED, mode="eager", backend="triton")
        assert head_calls(fused, digits_dit.head, noise)[1] == 0


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
    # Triton on a CPU only under the interpreter (tests/conftest.py sets it where no CUDA device is): else
    # "triton" is refused as unavailable (a GPU machine runs this file with CPU models), still an error.
    refusal = "float64" if "triton" in kernel_backends("cpu") else "not available here"
    with pytest.raises(RuntimeError, match=refusal):
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


@pytest.mark.parametrize("mode", sampler_module.GRAPH_MODES)
def test_graph_modes_need_cuda_and_say_so(digits_dit, mode):
    """Both graph modes are refused by name off CUDA (as cuda_graph always was), at construction."""
    with pytest.raises(ValueError, match=f"mode '{mode}' captures a CUDA graph and needs a CUDA device"):
        Sampler(digits_dit, SCHED, mode=mode, device="cpu")
    with pytest.raises(ValueError, match=f"mode '{mode}' captures a CUDA graph"):
        TeacherRecorder(digits_dit, SCHED, mode=mode, device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("batch", [1, 3, 67])
def test_cuda_graph_equals_sample(digits_dit, fused, batch):
    net = load_bundled("digits_dit", device="cuda")
    noise = torch.randn(batch, 1, 8, 8, device="cuda")
    sampler = Sampler(net, SCHED, mode="cuda_graph", batch_size=batch, fused=fused)
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


@pytest.mark.gpu
@pytest.mark.filterwarnings(COMPILE_WARNING)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fused", [False, True])
def test_compile_graph_equals_sample(fused):
    """The compiled K-step loop captured in one CUDA graph: sample's result up to Inductor's reordering
    (test_compile_dit's tolerance), the same bits on every replay, compile time reported apart."""
    net = load_bundled("digits_dit", device="cuda")
    noise = torch.randn(3, 1, 8, 8, device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    sampler = Sampler(net, SCHED, mode="compile_graph", batch_size=3, fused=fused)
    got = sampler(noise)
    assert sampler.resolved_mode == "compile_graph" and sampler.fused is fused and sampler.compile_seconds > 0
    torch.testing.assert_close(got, sample(net, noise, SCHED), rtol=1e-4, atol=1e-4)
    assert torch.equal(sampler(noise), got)  # a replay of the same graph: the same bits


@pytest.mark.gpu
@pytest.mark.filterwarnings(COMPILE_WARNING)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_on_cuda_runs_the_faster_graph():
    """On CUDA "auto" measures the plain and the compiled loop, each captured in a CUDA graph, and keeps the
    faster (its median is the smaller of the two it recorded)."""
    net = load_bundled("digits_dit", device="cuda")
    noise = torch.randn(3, 1, 8, 8, device="cuda")
    sampler = Sampler(net, SCHED, batch_size=3)
    assert set(sampler.timings) == set(sampler_module.GRAPH_MODES)
    assert sampler.resolved_mode == min(sampler.timings, key=sampler.timings.get)
    torch.testing.assert_close(sampler(noise), sample(net, noise, SCHED), rtol=1e-4, atol=1e-4)


# -- the same machinery for teacher trajectories: solvers, recording, guidance ----------------------------


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4"])
def test_record_equals_teacher_bitwise(digits_dit, solver):
    """Stage for stage ode_step on the same time floats: the recorded trajectory is the teacher's, bit for
    bit."""
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    grid = [0.0, 0.1, 0.35, 0.7, 1.0]
    recorder = TeacherRecorder(digits_dit, grid, mode="eager", solver=solver, record="all")
    got = recorder(noise)
    want = teacher_trajectory(digits_dit, noise, grid, solver)
    assert torch.equal(got.states, want.states) and torch.equal(got.velocities, want.velocities)
    np.testing.assert_array_equal(got.times, want.times)
    assert torch.equal(recorder(noise).states[-1], want.states[-1])  # a second call, the same bits
    again = recorder(2 * noise)  # static buffers reused; the earlier result is a copy
    assert torch.equal(got.states, want.states) and not torch.equal(again.states, got.states)


def test_record_states_keeps_no_velocities(digits_dit):
    noise = torch.randn(2, 1, 8, 8)
    got = TeacherRecorder(digits_dit, SCHED, mode="eager", record="states")(noise)
    assert got.velocities is None and got.states.shape == (4, 2, 1, 8, 8)
    assert torch.equal(got.states, teacher_trajectory(digits_dit, noise, SCHED, record="states").states)


@pytest.mark.filterwarnings(COMPILE_WARNING)
def test_compile_records_heun():
    model = TinyVelocity()
    noise = torch.randn(3, 5)
    got = TeacherRecorder(model, SCHED, mode="compile", solver="heun", record="all")(noise)
    want = teacher_trajectory(model, noise, SCHED, "heun")
    torch.testing.assert_close(got.states, want.states, rtol=16 * EPS32, atol=16 * EPS32)
    torch.testing.assert_close(got.velocities, want.velocities, rtol=16 * EPS32, atol=16 * EPS32)


@pytest.mark.parametrize("backend", kernel_backends("cpu"))
@pytest.mark.parametrize("batch", [1, 3])
def test_guidance_equals_sample_of_the_combined_velocity(backend, batch):
    model, w = DoubledVelocity(), 4.5
    noise = torch.randn(batch, 5)
    got = Sampler(model, SCHED, mode="eager", guidance=w, backend=backend)(noise)
    want = sample(guided(model, w), noise, SCHED)
    # Same float32 formula (v_u + w (v_c - v_u), then x + h v); the kernel may contract it into FMAs.
    torch.testing.assert_close(got, want, rtol=8 * EPS32, atol=8 * EPS32)
    unguided = Sampler(model, SCHED, mode="eager", guidance=0.0, backend=backend)(noise)
    torch.testing.assert_close(unguided, sample(guided(model, 0.0), noise, SCHED), rtol=0, atol=8 * EPS32)
    assert not torch.allclose(unguided, got)  # the weight matters


def test_guidance_heun_records_the_combined_slope():
    model, w = DoubledVelocity(), 2.0
    noise = torch.randn(3, 5)
    got = TeacherRecorder(model, SCHED, mode="eager", guidance=w, solver="heun", record="all")(noise)
    want = teacher_trajectory(guided(model, w), noise, SCHED, "heun")
    torch.testing.assert_close(got.states, want.states, rtol=8 * EPS32, atol=8 * EPS32)
    torch.testing.assert_close(got.velocities, want.velocities, rtol=8 * EPS32, atol=8 * EPS32)


def test_machinery_errors(digits_dit):
    with pytest.raises(ValueError, match="unknown solver"):
        TeacherRecorder(digits_dit, SCHED, solver="dopri5")
    with pytest.raises(ValueError, match="unknown record"):
        TeacherRecorder(digits_dit, SCHED, record="velocities")
    with pytest.raises(ValueError, match="unknown record"):
        TeacherRecorder(digits_dit, SCHED, record=None)  # not recording is what Sampler is for
    with pytest.raises(ValueError, match="guidance must be finite"):
        Sampler(digits_dit, SCHED, guidance=float("nan"))
    with pytest.raises(TypeError, match="DiT does not say it does"):  # the DiT is no CFG pair
        Sampler(digits_dit, SCHED, fused=True, guidance=2.0)
    flagged = copy.copy(digits_dit)  # the same weights, flagged as a pair: the fused check is next
    flagged.doubled_batch = True
    with pytest.raises(ValueError, match="fused=True runs one Euler step"):
        Sampler(flagged, SCHED, fused=True, guidance=2.0)
    recorder = TeacherRecorder(TinyVelocity(), SCHED, mode="eager")
    recorder(torch.randn(3, 5))  # built at the first call
    with pytest.raises(ValueError, match="buffers are \\(3, 5\\)"):
        recorder(torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"returned shape \(2, 5\).*expected the input's \(4, 5\)"):
        halves = bf.cfg_pair(lambda x, t: x[: len(x) // 2], lambda x, t: x[: len(x) // 2])
        Sampler(halves, SCHED, mode="eager", guidance=1.5)(torch.randn(2, 5))


@pytest.mark.parametrize("runner", [Sampler, TeacherRecorder])
def test_guidance_refuses_a_model_that_is_no_cfg_pair(runner):
    """A plain velocity returns [v; v] on the doubled batch [x; x]: guiding it would silently sample the
    unguided field (the issue's probe returned plain samples). Refused by name at construction, saying what
    to pass; the same field through cfg_pair is accepted and guided."""
    plain = TinyVelocity()
    with pytest.raises(TypeError, match=r"guidance=2\.0 .*TinyVelocity does not say it does.*cfg_pair"):
        runner(plain, SCHED, mode="eager", guidance=2.0)
    with pytest.raises(TypeError, match="function does not say it does"):
        runner(lambda x, t: -x, SCHED, mode="eager", guidance=2.0)
    runner(plain, SCHED, mode="eager")  # without guidance the plain model is what it takes
    assert bf.ode.is_cfg_pair(bf.cfg_pair(plain, plain)) and not bf.ode.is_cfg_pair(plain)
    runner(bf.cfg_pair(plain, plain), SCHED, mode="eager", guidance=2.0)


# -- guided_velocity: the same field Sampler(guidance=) steps from a doubled batch ---------------------------


# Refusals: nothing silently wrong (from the former tests/test_refusals.py)


TIMES = [0.0, 0.2, 0.5, 0.8, 1.0]  # step 2 starts at t = 0.5


class LaterStep(nn.Module):
    """-x on its first call (the sampler's one-row build check), then ``bad(x)``: a model that breaks only
    after the start, as the issue's did. A Python counter, not t: dynamo traces it (no data-dependent branch),
    so under torch.compile the bad output is what the traced loop sees."""

    def __init__(self, bad) -> None:
        super().__init__()
        self.bad, self.calls = bad, 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return -x if self.calls == 1 else self.bad(x)


BAD_OUTPUTS = {
    "broadcastable (B, 1)": (lambda x: -x[:, :1], ValueError, "velocity returned shape (4, 1)"),
    "wrong batch": (lambda x: -x[:1], ValueError, "velocity returned shape (1, 3)"),
    "float64": (lambda x: (-x).double(), ValueError, "dtype torch.float64"),
    "float16": (lambda x: (-x).half(), ValueError, "dtype torch.float16"),
    "int64": (lambda x: (-x).long(), ValueError, "dtype torch.int64"),
    "None": (lambda x: None, TypeError, "velocity returned NoneType"),
    "ndarray": (lambda x: (-x).numpy(), TypeError, "velocity returned ndarray"),
    "meta tensor": (lambda x: torch.empty_like(x, device="meta"), ValueError, "a tensor on meta"),
}


@pytest.mark.parametrize("case", sorted(BAD_OUTPUTS))
def test_the_eager_sampler_checks_every_steps_output(case):
    bad, error, fragment = BAD_OUTPUTS[case]
    sampler = bf.Sampler(LaterStep(bad), TIMES, mode="eager")
    # Call 1 is the build check; the loop's step 0 is call 2: the error names step 0 and its time.
    with pytest.raises(error, match=re.escape(fragment) + r".* at t = 0\.0 \(step 0\)"):
        sampler(torch.randn(4, 3))


@pytest.mark.filterwarnings(COMPILE_WARNING)
@pytest.mark.parametrize("case", ["broadcastable (B, 1)", "float64", "None"])
def test_the_compiled_sampler_checks_when_it_traces(case):
    """Under torch.compile shapes and dtypes are static: the check runs once, while dynamo traces the loop,
    and holds for every replay of that graph (a retrace checks again). A failing check surfaces with its
    own message (step, time, what), not dynamo's."""
    bad, error, fragment = BAD_OUTPUTS[case]
    sampler = bf.Sampler(LaterStep(bad), TIMES, mode="compile")
    with pytest.raises(error, match=re.escape(fragment) + r".*\(step 0\)"):
        sampler(torch.randn(4, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cuda_graph needs a CUDA device")
@pytest.mark.parametrize("case", ["broadcastable (B, 1)", "float64"])
def test_the_cuda_graph_sampler_checks_when_it_captures(case):
    """A captured graph replays the same kernels on the same buffers: the shapes and dtypes checked in the
    warm-up runs and the capture (Python runs then) are the ones every replay produces."""
    bad, error, fragment = BAD_OUTPUTS[case]
    sampler = bf.Sampler(LaterStep(bad), TIMES, mode="cuda_graph", device="cuda")
    with pytest.raises(error, match=re.escape(fragment) + r".*\(step 0\)"):
        sampler(torch.randn(4, 3, device="cuda"))


def test_a_later_step_and_the_stages_are_named():
    def narrows(x, t):  # right at t < 0.3, (B, 1) after: the silently broadcast model
        return -x if float(t[0]) < 0.3 else -x[:, :1]

    with pytest.raises(ValueError, match=r"shape \(4, 1\) at t = 0\.5 \(step 2\)"):
        bf.Sampler(narrows, TIMES, mode="eager")(torch.randn(4, 3))
    # Heun's second stage of step 1 runs at t1 = 0.5: the stage is checked too, under step 1.
    with pytest.raises(ValueError, match=r"shape \(4, 1\) at t = 0\.5 \(step 1\)"):
        TeacherRecorder(narrows, TIMES, mode="eager", solver="heun")(torch.randn(4, 3))
    # With guidance the doubled batch is what the model must return.
    with pytest.raises(ValueError, match=r"shape \(8, 1\) at t = 0\.5 \(step 2\).*\(8, 3\)"):
        bf.Sampler(bf.cfg_pair(narrows, narrows), TIMES, mode="eager", guidance=2.0)(torch.randn(4, 3))


def nan_after_the_first_step(x, t):
    return torch.where(t[:, None] > 0.3, torch.full_like(x, math.nan), -x)


@pytest.mark.filterwarnings(COMPILE_WARNING)
@pytest.mark.parametrize("mode", ["eager", "compile"])
def test_a_non_finite_result_is_refused_with_its_step(mode):
    sampler = bf.Sampler(nan_after_the_first_step, TIMES, mode=mode)
    with pytest.raises(ValueError, match=r"non-finite values in step 2, from t = 0\.5 to t = 0\.8"):
        sampler(torch.randn(4, 3))
    # The documented way out for a hot path that checks elsewhere.
    unchecked = bf.Sampler(nan_after_the_first_step, TIMES, mode=mode, check_finite=False)
    assert torch.isnan(unchecked(torch.randn(4, 3))).all()
    # A good model passes, and the check costs no correctness: the same bits as bf.sample in eager.
    noise = torch.randn(4, 3)
    good = bf.Sampler(lambda x, t: -x * t[:, None], TIMES, mode="eager")(noise)
    assert torch.equal(good, bf.sample(lambda x, t: -x * t[:, None], noise, TIMES))


def test_a_recording_teacher_names_the_grid_time():
    recorder = TeacherRecorder(nan_after_the_first_step, TIMES, mode="eager", record="all")
    with pytest.raises(ValueError, match=r"non-finite values at t = 0\.5 \(grid index 2\)"):
        recorder(torch.randn(4, 3))
    unchecked = TeacherRecorder(nan_after_the_first_step, TIMES, mode="eager", check_finite=False)
    assert torch.isnan(unchecked(torch.randn(4, 3)).states[-1]).all()
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        bf.Sampler(nan_after_the_first_step, TIMES, check_finite=1)
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        TeacherRecorder(nan_after_the_first_step, TIMES, check_finite=1)


@pytest.mark.parametrize("start", ["noise", "scaled"])
def test_a_late_start_is_honoured_bit_for_bit(digits_dit, start):
    """The sampler and the recording teacher start from the rule's state, as ``sample`` does."""
    grid = np.linspace(0.0, 1.0, 11)
    sched = bf.Schedule(times=grid[[2, 5, 10]], indices=[2, 5, 10], cost=0.0, grid=grid, start=start)
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    got = Sampler(digits_dit, sched, mode="eager")(noise)
    assert torch.equal(got, sample(digits_dit, noise, sched))
    scaled = start == "scaled"
    assert torch.equal(got, sample(digits_dit, noise * 0.8 if scaled else noise, sched.times))
    assert scaled == (not torch.equal(got, sample(digits_dit, noise, sched.times)))  # the rule mattered
    traj = TeacherRecorder(digits_dit, sched, mode="eager", record="states")(noise)
    start_state = noise * 0.8 if scaled else noise
    assert torch.equal(traj.states[0], start_state)
    assert torch.equal(
        traj.states, teacher_trajectory(digits_dit, start_state, sched.times, record="states").states
    )
