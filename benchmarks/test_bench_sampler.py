"""Sampler latency per call: eager (the baseline) vs compile, and on CUDA vs cuda_graph, compile_graph and the
fused head.

    python -m pytest benchmarks/test_bench_sampler.py --benchmark-only -p no:cacheprovider

Cases: batch 1 and 64, K = 1, 2, 4, 8 (and batch 16 at K = 4: compile_graph's cases), on the bundled
digits DiT (1x8x8) and a latent-sized DiT (4x32x32, patch 2, hidden 384, 6 heads: DiT-S's width, 4 blocks
instead of 12 to keep CPU runs in minutes). Each group
times its implementations beside the eager baseline in the same run; ``benchmark.extra_info`` carries the
compile time (reported apart from the steady state timed here), and on CUDA the floors of issue 5's targets:

- cuda_graph: ``floor_s`` = the sum of its kernels' device times (torch.profiler over one eager loop);
- fused head (group "fused head"): ``floor_s`` = its bytes / the device's measured copy bandwidth.

On a CPU the latent DiT at batch 64 (about a second per step) is marked slow: run it with ``-m slow``.
``benchmarks/gpu/run.sh figures`` runs this file on a GPU and checks the targets.
"""

from __future__ import annotations

import time

import pytest
import torch

from boss_fast._backends import kernel_backends
from boss_fast.kernels import euler_step_forward, linear_euler_forward, unpatchify
from boss_fast.models import load_bundled
from boss_fast.models.dit import DiT
from boss_fast.sampler import Sampler, TeacherRecorder

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
TRITON = "triton" in kernel_backends(DEVICE) and CUDA  # the interpreter is not benchmarked
KS = (1, 2, 4, 8)
BATCHES = (1, 64)
COMPILE_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"  # inductor's import

pytestmark = pytest.mark.filterwarnings(COMPILE_WARNING)


def _latent_dit(device: str) -> DiT:
    torch.manual_seed(0)
    net = DiT(input_size=32, patch_size=2, in_channels=4, hidden=384, depth=4, heads=6)
    # adaLN-Zero initialises the modulations and the head at zero; random weights make every op do work.
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return net.to(device).eval().requires_grad_(False)


_MODELS = {"digits_dit": lambda d: load_bundled("digits_dit", device=d), "latent_dit": _latent_dit}
_cache: dict[str, torch.nn.Module] = {}


def _model(name: str) -> torch.nn.Module:
    if name not in _cache:
        _cache[name] = _MODELS[name](DEVICE)
    return _cache[name]


def _cases(batches: tuple[int, ...] = BATCHES, ks: tuple[int, ...] = KS):
    for name in _MODELS:
        for batch in batches:
            for k in ks:
                slow = not CUDA and name == "latent_dit" and batch == 64
                marks = [pytest.mark.slow] if slow else []
                yield pytest.param(name, batch, k, marks=marks, id=f"{name}-B{batch}-K{k}")


# Compile + graph against the plain graph and eager (issue 31): batch 1 and 16, K = 4, each model.
GRAPH_CASES = list(_cases((1, 16), (4,)))
# eager and cuda_graph run at every case above and at batch 16 (K = 4) beside compile_graph.
ALL_CASES = list(_cases()) + list(_cases((16,), (4,)))


def _versions() -> dict[str, str]:
    info = {"device": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "not installed"
    return info


def _setup(name: str, batch: int, k: int, mode: str, fused: bool = False):
    model = _model(name)
    sched = [i / k for i in range(k + 1)]
    noise = torch.randn(batch, *model.sample_shape, device=DEVICE)
    start = time.perf_counter()
    sampler = Sampler(model, sched, mode=mode, batch_size=batch, fused=fused)
    build_s = time.perf_counter() - start
    sampler(noise)  # warm
    return sampler, noise, build_s


def _call(sampler: Sampler, noise: torch.Tensor) -> torch.Tensor:
    out = sampler(noise)
    if CUDA:
        torch.cuda.synchronize()
    return out


def _rounds(name: str, batch: int) -> int:
    return 5 if CUDA or (name == "digits_dit") or batch == 1 else 2


@pytest.mark.parametrize(("name", "batch", "k"), ALL_CASES)
def test_baseline_eager(benchmark, name, batch, k):
    benchmark.group = f"sampler {name} B={batch} K={k}"
    sampler, noise, _ = _setup(name, batch, k, "eager")
    benchmark.extra_info.update(_versions())
    benchmark.pedantic(
        _call, args=(sampler, noise), rounds=_rounds(name, batch), iterations=1, warmup_rounds=1
    )


@pytest.mark.parametrize(("name", "batch", "k"), list(_cases()))
def test_compile(benchmark, name, batch, k):
    benchmark.group = f"sampler {name} B={batch} K={k}"
    sampler, noise, build_s = _setup(name, batch, k, "compile")
    benchmark.extra_info.update(_versions(), compile_s=sampler.compile_seconds, build_s=build_s)
    benchmark.pedantic(
        _call, args=(sampler, noise), rounds=_rounds(name, batch), iterations=1, warmup_rounds=1
    )


def _kernel_seconds(sampler: Sampler, noise: torch.Tensor) -> float:
    """Sum of the device times of the kernels of one eager K-step loop (the cuda_graph floor)."""
    from torch.profiler import ProfilerActivity, profile

    sampler._x.copy_(noise)
    with profile(activities=[ProfilerActivity.CUDA]) as prof, torch.no_grad():
        sampler._loop(sampler._x)
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()) * 1e-6


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="cuda_graph needs a CUDA device")
@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize(("name", "batch", "k"), ALL_CASES)
def test_cuda_graph(benchmark, name, batch, k, fused):
    if fused and not TRITON:
        pytest.skip("the fused head needs triton on CUDA")
    benchmark.group = f"sampler {name} B={batch} K={k}"
    sampler, noise, build_s = _setup(name, batch, k, "cuda_graph", fused=fused)
    benchmark.extra_info.update(_versions(), build_s=build_s, floor_s=_kernel_seconds(sampler, noise))
    benchmark.pedantic(_call, args=(sampler, noise), rounds=20, iterations=1, warmup_rounds=3)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="compile_graph needs a CUDA device")
@pytest.mark.parametrize(("name", "batch", "k"), GRAPH_CASES)
def test_compile_graph(benchmark, name, batch, k):
    """The compiled K-step loop in one CUDA graph (unfused: Inductor sees the head's GEMM and the update);
    compile time apart in extra_info, against test_cuda_graph (both heads) and eager in the same group."""
    benchmark.group = f"sampler {name} B={batch} K={k}"
    sampler, noise, build_s = _setup(name, batch, k, "compile_graph", fused=False)
    benchmark.extra_info.update(_versions(), compile_s=sampler.compile_seconds, build_s=build_s)
    benchmark.pedantic(_call, args=(sampler, noise), rounds=20, iterations=1, warmup_rounds=3)


# -- the fused head + update against the unfused GEMM + update (latent DiT head, batch 64) -----------------


def _head_inputs(batch: int = 64):
    net = _model("latent_dit")
    x = torch.randn(batch, *net.sample_shape, device=DEVICE)
    features = torch.randn(batch, net.grid**2, net.hidden, device=DEVICE)
    return net, features, x


def _copy_bandwidth() -> float:
    """Achievable bytes/s: the best of 10 device-to-device copies of 1 GiB (read + write counted)."""
    src = torch.empty(2**28, device=DEVICE)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(10):
        torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / best


def _unfused(net, features, x, h):
    v = unpatchify(torch.nn.functional.linear(features, net.head.weight, net.head.bias), 2, 4, 32, 32)
    euler_step_forward(x, v, h, None, "triton" if TRITON else "torch", out=x)
    torch.cuda.synchronize()


def _fused(net, features, x, h):
    linear_euler_forward(features, net.head.weight, net.head.bias, x, h, 2, "triton", out=x)
    torch.cuda.synchronize()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="the head benchmark times CUDA kernels")
def test_baseline_unfused_head(benchmark):
    benchmark.group = "fused head latent_dit B=64"
    net, features, x = _head_inputs()
    benchmark.extra_info.update(_versions())
    benchmark.pedantic(_unfused, args=(net, features, x, 1e-3), rounds=50, iterations=1, warmup_rounds=5)


@pytest.mark.gpu
@pytest.mark.skipif(not TRITON, reason="the fused head needs triton on CUDA")
def test_fused_head(benchmark):
    benchmark.group = "fused head latent_dit B=64"
    net, features, x = _head_inputs()
    w = net.head.weight
    # Bytes the fused kernel must move: features and weight and bias read once, the state read and written.
    moved = (features.numel() + w.numel() + w.shape[0]) * 4 + 2 * x.numel() * x.element_size()
    benchmark.extra_info.update(_versions(), bytes=moved, floor_s=moved / _copy_bandwidth())
    benchmark.pedantic(_fused, args=(net, features, x, 1e-3), rounds=50, iterations=1, warmup_rounds=5)


# -- the same machinery for teacher trajectories (schedule search, straightening pairs) ---------------------

TEACHER_GRID = [i / 100 for i in range(101)]


def _teacher_noise() -> torch.Tensor:
    return torch.randn(256, 1, 8, 8, device=DEVICE)


def _plain_teacher(model, noise):
    from boss_fast.trajectories import teacher_trajectory

    out = teacher_trajectory(model, noise, TEACHER_GRID)
    torch.cuda.synchronize()
    return out


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="compares against a CUDA graph")
def test_baseline_teacher_plain(benchmark):
    benchmark.group = "teacher digits_dit grid 100 B=256"
    benchmark.extra_info.update(_versions())
    model, noise = _model("digits_dit"), _teacher_noise()
    benchmark.pedantic(_plain_teacher, args=(model, noise), rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="cuda_graph needs a CUDA device")
def test_teacher_cuda_graph(benchmark):
    benchmark.group = "teacher digits_dit grid 100 B=256"
    noise = _teacher_noise()
    start = time.perf_counter()
    teacher = TeacherRecorder(_model("digits_dit"), TEACHER_GRID, mode="cuda_graph", batch_size=256)
    benchmark.extra_info.update(_versions(), build_s=time.perf_counter() - start)

    def run():
        out = teacher(noise)
        torch.cuda.synchronize()
        return out

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
