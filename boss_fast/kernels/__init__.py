"""The sampler's ops, one file each: a Triton kernel, its launcher, the plain PyTorch reference beside it
and its ``torch.library`` custom-op registration (``torch.ops.boss_fast.<op>`` and ``<op>_out``).

- :func:`euler_step`: x + h * v, optionally with classifier-free guidance from a doubled batch.
- :func:`linear_euler`: the velocity head's GEMM with the Euler update in its epilogue (flat or through the
  DiT unpatchify permutation); :func:`fused_head_default` says where the sampler fuses by default.

The backend ("triton" or "torch") is chosen in :mod:`boss_fast._backends`. Importing this package compiles
nothing: Triton kernels are JIT-compiled at their first launch.
"""

from boss_fast.kernels.euler_step import euler_step, euler_step_forward, euler_step_reference
from boss_fast.kernels.linear_euler import (
    fused_head_default,
    linear_euler,
    linear_euler_forward,
    linear_euler_reference,
    unpatchify,
)

__all__ = [
    "euler_step",
    "euler_step_forward",
    "euler_step_reference",
    "fused_head_default",
    "linear_euler",
    "linear_euler_forward",
    "linear_euler_reference",
    "unpatchify",
]
