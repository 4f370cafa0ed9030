"""``linear_euler``: x + h * (features @ weight.T + bias), the velocity head's GEMM with the Euler update in
its epilogue, so the velocity is never written to memory.

Two output layouts:

- flat: ``x`` has shape (*lead, N) with ``features`` (*lead, K); row m of the GEMM updates row m of x.
- patch (``patch_size=p``, the DiT case): ``features`` (B, T, K) are the trunk's tokens, the head's N = p*p*C
  outputs per token are pixels of the (B, C, H, W) state, and the epilogue writes through the unpatchify
  permutation of :class:`boss_fast.models.dit.DiT`: token ``n = i * (W // p) + j`` and channel
  ``k = (pi * p + pj) * C + c`` hold pixel ``(c, i * p + pi, j * p + pj)``.

Layers as in ``euler_step``: ``_linear_euler_kernel`` (Triton), ``linear_euler_forward`` (dispatch, no
validation), public ``linear_euler``; ``linear_euler_reference`` is the spec. The GEMM accumulates in float32
(IEEE float32 products for float32 inputs: no TF32, so the result matches the float32 reference to GEMM
reassociation), the epilogue adds bias and ``h * acc`` to x in float32 and rounds once to x's dtype.

Registered as ``torch.ops.boss_fast.linear_euler`` (out of place) and ``torch.ops.boss_fast.linear_euler_out``
(writes ``out``, which may be ``x``: each output element is read and written by the one program that owns it,
after the GEMM that produced it, so the in-place update is race-free). The ops run the Triton kernel for
backend "triton" (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``) and the reference for "torch".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from boss_fast._backends import kernel_backend, triton_interpreting
from boss_fast._validation import check_float, check_int

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where no triton wheel exists
    triton = None

__all__ = [
    "FUSED_HEAD_WINS",
    "fused_head_default",
    "linear_euler",
    "linear_euler_forward",
    "linear_euler_reference",
    "unpatchify",
]

# Tiles: BLOCK_M rows (tokens) x up to 64 head outputs x BLOCK_K of K. The latent DiT head is N = p*p*C = 16
# wide, so one N tile covers it and the features are read exactly once.
_MAX_BLOCK_N = 64


@dataclass(frozen=True)
class LaunchConfig:
    """The fused head kernel's tiles and launch: rows per program, K per step, warps, pipeline stages."""

    block_m: int = 64
    block_k: int = 32
    num_warps: int = 4
    num_stages: int = 3


# One set of tiles for every head shape so far: benchmarks/gpu/tune_head.py sweeps others on a GPU, and a
# per-shape rule belongs here once a sweep has measured one.
DEFAULT_LAUNCH = LaunchConfig()

# Where the fused head is the Sampler's default (fused=None), per state dtype: {batch: fused wins}, measured
# inside a captured CUDA graph against the unfused GEMM + update (benchmarks/gpu/tune_head.py writes this
# table, "table" in its fused_default.json; copy it here with the device's name). Empty: not measured inside a
# graph yet. The only figure so far (H200, batch 64, one call at a time with a host sync, 0.92x: launch and
# sync dominated both, benchmarks/results/gpu/README.md) says nothing about a graph, so until a measurement
# the default stays what it was: fuse wherever the model opts in.
FUSED_HEAD_WINS: dict[str, dict[int, bool]] = {}


def fused_head_default(batch: int | None, dtype: torch.dtype) -> bool | None:
    """Whether the fused head is the default at ``batch`` rows of state ``dtype``: the measured batch of
    :data:`FUSED_HEAD_WINS` nearest to ``batch`` (log2 distance, a tie to the smaller) decides; a dtype not
    measured fuses. ``batch`` None (not known yet): the answer if it is the same at every batch, else None.

    Example:
        >>> fused_head_default(64, torch.float32)  # nothing measured in a graph yet: fuse, as before
        True
    """
    wins = FUSED_HEAD_WINS.get(str(dtype).removeprefix("torch."))
    if not wins:
        return True
    if batch is None:
        answers = set(wins.values())
        return answers.pop() if len(answers) == 1 else None
    nearest = min(sorted(wins), key=lambda b: abs(math.log2(b) - math.log2(batch)))
    return wins[nearest]


if triton is not None:

    @triton.jit
    def _linear_euler_kernel(
        f_ptr,
        w_ptr,
        b_ptr,
        x_ptr,
        out_ptr,
        M,
        N,
        K,
        stride_fm,
        stride_fk,
        stride_wn,
        stride_wk,
        h,
        T,
        GW,
        C,
        HW,
        W,
        P: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        PATCH: tl.constexpr,
        PRECISION: tl.constexpr,
        UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """out[dest(m, n)] = x[dest(m, n)] + h * (sum_k f[m, k] w[n, k] + b[n]); dest is m * N + n (flat)
        or the unpatchify position of token m's output n (PATCH)."""
        rm = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            a = tl.load(
                f_ptr + rm[:, None] * stride_fm + kk[None, :] * stride_fk,
                mask=(rm[:, None] < M) & (kk[None, :] < K),
                other=0.0,
            )
            b = tl.load(
                w_ptr + rn[None, :] * stride_wn + kk[:, None] * stride_wk,
                mask=(rn[None, :] < N) & (kk[:, None] < K),
                other=0.0,
            )
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        if PATCH:
            batch = rm // T
            tok = rm % T
            i = tok // GW
            j = tok % GW
            pi = rn // (P * C)
            rem = rn % (P * C)
            pj = rem // C
            c = rem % C
            row = i[:, None] * P + pi[None, :]
            col = j[:, None] * P + pj[None, :]
            dest = (batch[:, None] * C + c[None, :]) * HW + row * W + col
        else:
            dest = rm[:, None] * N + rn[None, :]
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        x = tl.load(x_ptr + dest, mask=mask).to(tl.float32)
        tl.store(out_ptr + dest, (x + h * acc).to(out_ptr.dtype.element_ty), mask=mask)


def unpatchify(tokens: torch.Tensor, patch_size: int, channels: int, height: int, width: int) -> torch.Tensor:
    """(B, T, p*p*C) head outputs -> (B, C, H, W), T = (H/p)(W/p), in :class:`~boss_fast.models.dit.DiT`'s
    layout (module docstring); ``DiT.unpatchify`` calls this."""
    b, p, c = tokens.shape[0], patch_size, channels
    gh, gw = height // p, width // p
    x = tokens.reshape(b, gh, gw, p, p, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, height, width)


def linear_euler_reference(
    features: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x: torch.Tensor,
    h: float,
    patch_size: int | None = None,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The spec: the head in float32, ``x + h * v`` in float32, one rounding to x's dtype (unfused)."""
    v = F.linear(features.float(), weight.float(), None if bias is None else bias.float())
    if patch_size is None:
        v = v.reshape(x.shape)
    else:
        v = unpatchify(v, patch_size, x.shape[1], x.shape[2], x.shape[3])
    result = torch.add(x.float(), v, alpha=h).to(x.dtype)
    if out is None:
        return result
    return out.copy_(result)


def _linear_euler_triton(
    features: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x: torch.Tensor,
    h: float,
    patch_size: int | None,
    out: torch.Tensor,
    *,
    config: LaunchConfig | None = None,
) -> None:
    """Launch ``_linear_euler_kernel``: features (.., K) any strides, x and out contiguous; ``config``
    replaces the tiles of ``DEFAULT_LAUNCH`` (benchmarks/gpu/tune_head.py sweeps them)."""
    f2 = features.reshape(-1, features.shape[-1])  # a view for the contiguous trunk output
    m, k = f2.shape
    n = weight.shape[0]
    if m == 0 or n == 0:
        return
    # Triton 3.9's interpreter gets bfloat16 tl.dot wrong (errors of 2e10 on a 16x16x16 product of N(0, 1)
    # entries, measured); there the tiles are upcast to float32 first. That is exact for bf16/fp16 inputs
    # (products of 8- or 11-bit mantissas fit float32's 24), i.e. what the GPU's MMA computes.
    interpreting = triton_interpreting() and x.device.type != "cuda"
    cfg = config or DEFAULT_LAUNCH
    block_n = min(_MAX_BLOCK_N, max(16, triton.next_power_of_2(n)))
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, block_n))
    if patch_size is None:
        p, t, gw, c, hw, w = 1, 1, 1, 1, 1, 1
    else:
        p, c, hh, w = patch_size, x.shape[1], x.shape[2], x.shape[3]
        t, gw, hw = features.shape[1], w // p, hh * w
    _linear_euler_kernel[grid](
        f2,
        weight,
        weight if bias is None else bias,  # any valid pointer; never read without HAS_BIAS
        x,
        out,
        m,
        n,
        k,
        f2.stride(0),
        f2.stride(1),
        weight.stride(0),
        weight.stride(1),
        float(h),
        t,
        gw,
        c,
        hw,
        w,
        P=p,
        HAS_BIAS=bias is not None,
        PATCH=patch_size is not None,
        PRECISION="ieee" if features.dtype == torch.float32 or interpreting else "tf32",
        UPCAST=interpreting,
        BLOCK_M=cfg.block_m,
        BLOCK_N=block_n,
        BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )


def _impl(backend: str):
    if backend == "triton":
        return _linear_euler_triton
    return lambda f, w, b, x, h, p, out: linear_euler_reference(f, w, b, x, h, p, out=out)


@torch.library.custom_op("boss_fast::linear_euler", mutates_args=())
def _linear_euler_op(
    features: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x: torch.Tensor,
    h: float,
    patch_size: int | None,
    backend: str,
) -> torch.Tensor:
    out = torch.empty_like(x)
    _impl(backend)(features, weight, bias, x, h, patch_size, out)
    return out


@_linear_euler_op.register_fake
def _(features, weight, bias, x, h, patch_size, backend):
    return torch.empty_like(x)


@torch.library.custom_op("boss_fast::linear_euler_out", mutates_args=("out",))
def _linear_euler_out_op(
    features: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x: torch.Tensor,
    h: float,
    patch_size: int | None,
    backend: str,
    out: torch.Tensor,
) -> None:
    _impl(backend)(features, weight, bias, x, h, patch_size, out)


@_linear_euler_out_op.register_fake
def _(features, weight, bias, x, h, patch_size, backend, out):
    return None


def linear_euler_forward(
    features: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x: torch.Tensor,
    h: float,
    patch_size: int | None,
    backend: str,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dispatch without validation (``Sampler``'s hot path); ``backend`` is "triton" or "torch".

    The torch backend calls the reference directly (traceable ops for ``torch.compile``); Triton goes
    through the custom op.
    """
    if backend == "torch":
        return linear_euler_reference(features, weight, bias, x, h, patch_size, out=out)
    if out is None:
        return torch.ops.boss_fast.linear_euler(features, weight, bias, x, h, patch_size, backend)
    torch.ops.boss_fast.linear_euler_out(features, weight, bias, x, h, patch_size, backend, out)
    return out


def linear_euler(
    features: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x: torch.Tensor,
    h: float,
    *,
    patch_size: int | None = None,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Fused velocity head + Euler step: ``x + h * head(features)``, never materialising the velocity.

    Args:
        features: (*lead, K) (flat) or (B, T, K) (patch), the trunk's output; any strides.
        weight: (N, K), the head's ``nn.Linear`` weight, same dtype and device as ``features``.
        bias: (N,) or None.
        x: the state, contiguous: (*lead, N) (flat) or (B, C, H, W) with N = p*p*C and
            T = (H/p)(W/p) (patch). Float32 / bfloat16 / float16 for Triton.
        h: step size in flow time, a host float (baked into the launch: no device sync).
        patch_size: p for the DiT unpatchify layout (module docstring), None for the flat layout.
        out: destination like x (``out=x`` updates in place), or None for a new tensor.
        backend: "auto", "triton" or "torch".

    Returns:
        ``out`` or a new tensor like x.

    Raises:
        TypeError / ValueError on mismatched shapes, dtypes or devices; RuntimeError when an explicit
        backend cannot run here.

    Example:
        >>> f, w, x = torch.ones(2, 3), torch.ones(4, 3), torch.zeros(2, 4)
        >>> linear_euler(f, w, None, x, 0.5, backend="torch")
        tensor([[1.5000, 1.5000, 1.5000, 1.5000],
                [1.5000, 1.5000, 1.5000, 1.5000]])
    """
    _check_args(features, weight, bias, x, patch_size, out)
    h = check_float(h, "h")
    name = kernel_backend(backend, x.device, x.dtype)
    if name == "triton" and features.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise RuntimeError(
            f"the triton linear_euler takes float32/bfloat16/float16 features, got {features.dtype}"
        )
    return linear_euler_forward(features, weight, bias, x, h, patch_size, name, out)


def _check_args(
    features: object,
    weight: object,
    bias: object,
    x: object,
    patch_size: int | None,
    out: object,
) -> None:
    """Shape, dtype, device and layout checks at the boundary (metadata only, no sync)."""
    for label, tensor in (("features", features), ("weight", weight), ("x", x)):
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise TypeError(f"{label} must be a floating-point torch.Tensor, got {type(tensor).__name__}")
    f, w, xs = features, weight, x
    if w.ndim != 2:
        raise ValueError(f"weight must be (N, K), got shape {tuple(w.shape)}")
    n, k = w.shape
    if f.ndim < 2 or f.shape[-1] != k:
        raise ValueError(f"features must be (..., K) with K = {k} (weight's), got shape {tuple(f.shape)}")
    if f.dtype != w.dtype or f.device != w.device or xs.device != f.device:
        raise ValueError(
            f"features, weight (and bias) must share a dtype and device, and x the device: got features "
            f"{f.dtype}/{f.device}, weight {w.dtype}/{w.device}, x {xs.device}"
        )
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (n,):
            raise ValueError(f"bias must be a ({n},) tensor or None")
        if bias.dtype != w.dtype or bias.device != w.device:
            raise ValueError(f"bias must match weight's dtype and device ({w.dtype}, {w.device})")
    if not xs.is_contiguous():
        raise ValueError("x must be contiguous (the epilogue computes flat offsets)")
    if patch_size is None:
        if tuple(xs.shape) != (*f.shape[:-1], n):
            raise ValueError(
                f"x must have shape {(*f.shape[:-1], n)} (features' leading dims, N), got {tuple(xs.shape)}"
            )
    else:
        p = check_int(patch_size, "patch_size")
        if xs.ndim != 4 or f.ndim != 3:
            raise ValueError(
                f"with patch_size, x must be (B, C, H, W) and features (B, T, K); got {tuple(xs.shape)} "
                f"and {tuple(f.shape)}"
            )
        b, c, hh, ww = xs.shape
        if hh % p or ww % p:
            raise ValueError(f"x's H, W = {hh}, {ww} must be divisible by patch_size {p}")
        if n != p * p * c:
            raise ValueError(f"the head's N = {n} must be patch_size^2 * C = {p * p * c}")
        if tuple(f.shape[:2]) != (b, (hh // p) * (ww // p)):
            raise ValueError(
                f"features must be (B, T, K) = ({b}, {(hh // p) * (ww // p)}, {k}), got {tuple(f.shape)}"
            )
    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
        if (
            out.shape != xs.shape
            or out.dtype != xs.dtype
            or out.device != xs.device
            or not out.is_contiguous()
        ):
            raise ValueError("out must be a contiguous tensor with x's shape, dtype and device")
