"""``euler_step``: x + h * v (optionally with a classifier-free-guidance combine), as a Triton kernel.

Three layers, one name: ``_euler_step_kernel`` (Triton), ``euler_step_forward`` (the launcher-level dispatch:
no validation, backend already resolved), and the public ``euler_step`` (validates, resolves the backend in
``boss_fast._backends``). ``euler_step_reference`` beside them is the spec and the test oracle; without
guidance it *is* the package's one Euler update, :func:`boss_fast.ode.euler_update`.

Numerics: storage in float32, bfloat16 or float16; arithmetic in float32; one rounding to the storage dtype
at the store. Guidance takes a doubled batch ``v = cat([v_uncond, v_cond])`` (diffusers' order) of shape
(2B, ...) and uses ``v_uncond + w * (v_cond - v_uncond)``.

The op is registered as ``torch.ops.boss_fast.euler_step`` (out of place) and
``torch.ops.boss_fast.euler_step_out`` (writes ``out``, which may be ``x`` itself for an in-place step),
each with a fake (shape) function, so ``torch.compile(fullgraph=True)`` and CUDA-graph capture take them
whole. The ops' implementation dispatches on the backend name they are given: "triton" launches the kernel
(on CUDA, or on CPU tensors through the Triton interpreter under ``TRITON_INTERPRET=1``), "torch" runs the
reference.
"""

from __future__ import annotations

import torch

from boss_fast._backends import kernel_backend
from boss_fast._validation import check_float, check_scale
from boss_fast.ode import cfg_combine, euler_update

try:  # optional: the `triton` extra; without it only the torch backend exists
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where no triton wheel exists
    triton = None

__all__ = ["euler_step", "euler_step_forward", "euler_step_reference"]

# 1024 elements per program: 4 warps x 32 threads x 8 contiguous elements, 16-byte bf16 / 32-byte fp32
# accesses per thread. The op is purely memory-bound (12 bytes per fp32 element, 16 with guidance).
_BLOCK = 1024


if triton is not None:

    @triton.jit
    def _euler_step_kernel(x_ptr, v_ptr, out_ptr, n, h, w, GUIDED: tl.constexpr, BLOCK: tl.constexpr):
        """out[i] = x[i] + h * v[i] over n contiguous elements; with GUIDED, v[i] is replaced by
        v[i] + w * (v[n + i] - v[i]) (uncond first, cond second)."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
        v = tl.load(v_ptr + offs, mask=mask).to(tl.float32)
        if GUIDED:
            vc = tl.load(v_ptr + n + offs, mask=mask).to(tl.float32)
            v = v + w * (vc - v)
        tl.store(out_ptr + offs, (x + h * v).to(out_ptr.dtype.element_ty), mask=mask)


def _euler_step_triton(
    x: torch.Tensor, v: torch.Tensor, h: float, guidance: float | None, out: torch.Tensor
) -> None:
    """Launch ``_euler_step_kernel`` writing ``out``; x, v, out contiguous (checked at the boundary)."""
    n = x.numel()
    if n == 0:
        return
    grid = (triton.cdiv(n, _BLOCK),)
    w = 0.0 if guidance is None else float(guidance)
    _euler_step_kernel[grid](x, v, out, n, float(h), w, GUIDED=guidance is not None, BLOCK=_BLOCK)


def euler_step_reference(
    x: torch.Tensor,
    v: torch.Tensor,
    h: float,
    guidance: float | None = None,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The spec: ``x + h * v`` (v combined from the doubled batch when ``guidance`` is given) in x's dtype.

    Without guidance this is :func:`boss_fast.ode.euler_update` (``torch.add(x, v, alpha=h)``, which
    computes reduced-precision storage in float32 and rounds once, as the kernel does). With guidance the
    slope is :func:`boss_fast.ode.cfg_combine` (float32 arithmetic; float64 input stays float64) and the
    update ``euler_update`` in that dtype, rounded once to x's: in float32 and float64 exactly what
    ``euler_update`` does with ``guided_velocity``'s output.
    """
    if guidance is None:
        return euler_update(x, v, h, out=out)
    b = x.shape[0]
    combined = cfg_combine(v[:b], v[b:], guidance)  # float32 arithmetic (float64 stays float64)
    result = euler_update(x.to(combined.dtype), combined, h).to(x.dtype)  # one rounding to x's dtype
    if out is None:
        return result
    return out.copy_(result)


_IMPLS = {"torch": lambda x, v, h, w, out: euler_step_reference(x, v, h, w, out=out)}
if triton is not None:
    _IMPLS["triton"] = _euler_step_triton


@torch.library.custom_op("boss_fast::euler_step", mutates_args=())
def _euler_step_op(
    x: torch.Tensor, v: torch.Tensor, h: float, guidance: float | None, backend: str
) -> torch.Tensor:
    out = torch.empty_like(x)
    _IMPLS[backend](x, v, h, guidance, out)
    return out


@_euler_step_op.register_fake
def _(x: torch.Tensor, v: torch.Tensor, h: float, guidance: float | None, backend: str) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("boss_fast::euler_step_out", mutates_args=("out",))
def _euler_step_out_op(
    x: torch.Tensor, v: torch.Tensor, h: float, guidance: float | None, backend: str, out: torch.Tensor
) -> None:
    _IMPLS[backend](x, v, h, guidance, out)


@_euler_step_out_op.register_fake
def _(
    x: torch.Tensor, v: torch.Tensor, h: float, guidance: float | None, backend: str, out: torch.Tensor
) -> None:
    return None


def euler_step_forward(
    x: torch.Tensor,
    v: torch.Tensor,
    h: float,
    guidance: float | None,
    backend: str,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dispatch without validation (the hot path of ``Sampler``): ``backend`` is "triton" or "torch".

    The torch backend calls the reference directly rather than through the custom op, so ``torch.compile``
    sees plain tensor ops and can fuse the update into the producer of v; the Triton backend goes through the
    custom op, which compile and graph capture treat as one opaque call.
    """
    if backend == "torch":
        return euler_step_reference(x, v, h, guidance, out=out)
    if out is None:
        return torch.ops.boss_fast.euler_step(x, v, h, guidance, backend)
    torch.ops.boss_fast.euler_step_out(x, v, h, guidance, backend, out)
    return out


def euler_step(
    x: torch.Tensor,
    v: torch.Tensor,
    h: float,
    *,
    guidance: float | None = None,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """One Euler step ``x + h * v`` with float32 arithmetic, in x's storage dtype.

    Args:
        x: (B, ...) state, contiguous, float32 / bfloat16 / float16 (float64 uses the torch reference).
        v: velocity like x; with ``guidance``, the doubled batch (2B, ...) ``cat([v_uncond, v_cond])``.
        h: step size in flow time (t_next - t), a host float: no device-to-host sync.
        guidance: classifier-free guidance weight w, v = v_uncond + w (v_cond - v_uncond); None for none.
        out: destination like x (``out=x`` steps in place); a new tensor when None.
        backend: "auto", "triton" or "torch" (see :func:`boss_fast._backends.kernel_backend`).

    Returns:
        ``out`` or a new tensor, shaped and typed like x.

    Raises:
        TypeError / ValueError on mismatched shapes, dtypes or devices, a non-contiguous tensor for the
        Triton backend, or a non-finite h; RuntimeError when an explicit backend cannot run here.

    Example:
        >>> euler_step(torch.zeros(2, 3), torch.ones(2, 3), 0.5, backend="torch")
        tensor([[0.5000, 0.5000, 0.5000],
                [0.5000, 0.5000, 0.5000]])
    """
    _check_args(x, v, guidance, out)
    h = check_float(h, "h")
    if guidance is not None:
        guidance = check_scale(guidance, "guidance")
    name = kernel_backend(backend, x.device, x.dtype)
    if name == "triton":
        for label, tensor in (("x", x), ("v", v), ("out", out)):
            if tensor is not None and not tensor.is_contiguous():
                raise ValueError(f"the triton euler_step needs contiguous tensors; {label} is not")
    return euler_step_forward(x, v, h, guidance, name, out)


def _check_floating(tensor: object, label: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        what = f"dtype {tensor.dtype}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise TypeError(f"{label} must be a floating-point torch.Tensor, got {what}")
    return tensor


def _check_args(x: object, v: object, guidance: float | None, out: object) -> None:
    """Metadata checks at the boundary (no sync)."""
    x, v = _check_floating(x, "x"), _check_floating(v, "v")
    if x.ndim < 1:
        raise ValueError("x must have a batch dimension (B, ...), got a 0-d tensor")
    expected = (2 * x.shape[0], *x.shape[1:]) if guidance is not None else tuple(x.shape)
    if tuple(v.shape) != expected:
        what = "the doubled batch cat([v_uncond, v_cond]) " if guidance is not None else ""
        raise ValueError(f"v must have {what}shape {expected}, got {tuple(v.shape)}")
    if v.dtype != x.dtype or v.device != x.device:
        raise ValueError(
            f"v must match x's dtype and device ({x.dtype}, {x.device}), got ({v.dtype}, {v.device})"
        )
    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
        if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
            raise ValueError(
                f"out must match x's shape, dtype and device {tuple(x.shape)}, {x.dtype}, {x.device}; "
                f"got {tuple(out.shape)}, {out.dtype}, {out.device}"
            )
