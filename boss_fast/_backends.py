"""The one place that knows which kernel backends exist and picks one.

Every backend of an op has the same signature. ``backend="auto"`` takes the fastest one that imports here and
warns once when that is not the fastest one the package has; an explicit request for a backend that cannot
load raises. Loading is lazy: nothing is built or compiled at import time.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable

__all__ = ["DP_BACKENDS", "dp_backends", "dp_kernel"]

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
    """The Bellman DP backends importable here, fastest first, e.g. ``("cpp", "numba", "numpy")``."""
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
