"""The one place that knows which kernel backends exist and picks one.

Every backend of an op has the same signature. ``backend="auto"`` takes the fastest one that imports here and
warns once when that is not the fastest one the package has; an explicit request for a backend that cannot
load raises. Loading is lazy: nothing is built or compiled at import time.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from collections.abc import Callable

__all__ = ["DP_BACKENDS", "KERNEL_BACKENDS", "dp_backends", "dp_kernel", "kernel_backend", "kernel_backends"]

# Fastest first. Measured at N = 1001, K = 10 on a 2-core Xeon: see README, "Performance".
DP_BACKENDS: tuple[str, ...] = ("cpp", "numba", "numpy")

_DP_LOADERS: dict[str, tuple[str, str]] = {
    "cpp": ("boss_fast._C", "bellman_table"),
    "numba": ("boss_fast._bellman_numba", "bellman_table"),
    "numpy": ("boss_fast.bellman", "bellman_table_reference"),
}

_warned_fallback = False


@functools.cache
def _load(name: str) -> tuple[Callable | None, str]:
    """(kernel, "") when backend ``name`` loads here, else (None, why not)."""
    module, attr = _DP_LOADERS[name]
    try:
        return getattr(importlib.import_module(module), attr), ""
    except ImportError as err:  # not built (no compiler at install time) or not installed (numba)
        return None, f"{type(err).__name__}: {err}"


def dp_backends() -> tuple[str, ...]:
    """The Bellman DP backends importable here, fastest first, e.g. ``("cpp", "numba", "numpy")``.

    Example:
        >>> dp_backends()[-1]  # the NumPy reference is always there
        'numpy'
    """
    return tuple(name for name in DP_BACKENDS if _load(name)[0] is not None)


def dp_kernel(backend: str = "auto") -> tuple[str, Callable]:
    """Resolve ``backend`` to ``(name, kernel)``.

    ``kernel(cost, max_steps, discount) -> (value, next, bad_row)`` with ``cost`` a C-contiguous float64
    (N, N) array; see :func:`boss_fast.bellman.bellman_table_reference` for the contract.

    Raises:
        ValueError: ``backend`` is not "auto" or one of :data:`DP_BACKENDS`.
        RuntimeError: the requested backend is known but cannot load here (the message says why).
    """
    global _warned_fallback
    if backend == "auto":
        for name in DP_BACKENDS:
            kernel, _ = _load(name)
            if kernel is not None:
                if name != DP_BACKENDS[0] and not _warned_fallback:
                    _warned_fallback = True
                    reasons = "; ".join(f"{n}: {_load(n)[1]}" for n in DP_BACKENDS[: DP_BACKENDS.index(name)])
                    warnings.warn(
                        f"boss_fast: using the '{name}' Bellman backend, the faster ones are unavailable "
                        f"({reasons})",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                return name, kernel
        raise RuntimeError("no Bellman DP backend could be loaded")  # numpy always loads; defensive
    if not isinstance(backend, str) or backend not in _DP_LOADERS:
        raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {DP_BACKENDS}")
    kernel, why = _load(backend)
    if kernel is None:
        raise RuntimeError(f"the '{backend}' Bellman backend is not available here ({why})")
    return backend, kernel


# ---------------------------------------------------------------------------------------------------------
# Kernel backends of the sampler's ops (boss_fast.kernels): "triton" (the fused Triton kernels) or "torch"
# (the plain PyTorch reference beside each kernel). Both have the op's signature; the op files dispatch on
# the name resolved here.

# Fastest first on CUDA. On a CPU the Triton interpreter is a correctness tool only (see the kernel tests).
KERNEL_BACKENDS: tuple[str, ...] = ("triton", "torch")

# The storage dtypes the Triton kernels take (fp32 arithmetic inside); float64 always uses the reference.
TRITON_DTYPES: tuple[str, ...] = ("torch.float32", "torch.bfloat16", "torch.float16")

_warned_kernel_fallback = False


@functools.cache
def _triton_status() -> str:
    """ "" when triton imports here, else why not (a message for errors and the fallback warning)."""
    try:
        importlib.import_module("triton")
    except ImportError as err:  # no wheel for this platform, or not installed (it is an optional extra)
        return f"{type(err).__name__}: {err}"
    return ""


def triton_interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1``: Triton kernels then run on CPU tensors through the interpreter.

    Triton reads the variable when a kernel is decorated, i.e. when ``boss_fast.kernels`` is first imported;
    set it before that import (``tests/conftest.py`` does on machines without CUDA).
    """
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_unavailable(device_type: str) -> str:
    """ "" when the Triton kernels can run on ``device_type`` here, else why not."""
    why = _triton_status()
    if why:
        return why
    if device_type == "cuda":
        return ""
    if triton_interpreting():
        return ""
    return (
        f"Triton kernels run on CUDA devices (or any device under TRITON_INTERPRET=1), not on {device_type!r}"
    )


def kernel_backends(device: object = "cuda") -> tuple[str, ...]:
    """The kernel backends usable on ``device`` here, fastest first, e.g. ``("triton", "torch")``."""
    device_type = _device_type(device)
    return tuple(n for n in KERNEL_BACKENDS if n == "torch" or not _triton_unavailable(device_type))


def _device_type(device: object) -> str:
    import torch  # local: keeps the DP part of this module free of torch at import

    return torch.device(device).type if not isinstance(device, torch.device) else device.type


def kernel_backend(backend: str = "auto", device: object = "cpu", dtype: object = None) -> str:
    """Resolve ``backend`` for tensors on ``device`` of storage ``dtype`` to "triton" or "torch".

    ``"auto"``: Triton on CUDA for float32/bfloat16/float16, else the torch reference. On CUDA without a
    usable triton it falls back to torch with one RuntimeWarning per process; on a CPU torch is simply the
    right choice (no warning), unless ``TRITON_INTERPRET=1`` asks for the interpreter explicitly by name.
    float64 always resolves to torch under "auto" (the kernels compute in float32).

    Raises:
        ValueError: ``backend`` is not "auto" or one of :data:`KERNEL_BACKENDS`.
        RuntimeError: "triton" was requested but cannot run here (no triton, a CPU tensor without the
            interpreter, or a float64 tensor); the message says why.
    """
    global _warned_kernel_fallback
    device_type = _device_type(device)
    dtype_ok = dtype is None or str(dtype) in TRITON_DTYPES
    if backend == "auto":
        if device_type != "cuda" or not dtype_ok:
            return "torch"
        why = _triton_unavailable(device_type)
        if not why:
            return "triton"
        if not _warned_kernel_fallback:
            _warned_kernel_fallback = True
            warnings.warn(
                f"boss_fast: using the 'torch' kernel backend on CUDA, triton is unavailable ({why})",
                RuntimeWarning,
                stacklevel=3,
            )
        return "torch"
    if not isinstance(backend, str) or backend not in KERNEL_BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; expected 'auto' or one of {KERNEL_BACKENDS}")
    if backend == "triton":
        why = _triton_unavailable(device_type)
        if why:
            raise RuntimeError(f"the 'triton' kernel backend is not available here ({why})")
        if not dtype_ok:
            raise RuntimeError(
                f"the 'triton' kernels take float32, bfloat16 or float16 storage, got {dtype}; use 'torch'"
            )
    return backend
