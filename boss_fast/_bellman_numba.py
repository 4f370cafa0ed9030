"""Numba kernel for the Bellman table; same contract as ``boss_fast._C.bellman_table``.

Imported lazily by :mod:`boss_fast._backends`, so ``import boss_fast`` neither needs Numba nor pays its
start-up (~0.5 s) until the ``numba`` backend is asked for.

LLVM, as Numba drives it, keeps a float min reduction scalar even with fastmath (0.85 Gcand/s here), but it
vectorises an integer one. So the sums row[j] + dv[j] are written to a scratch row and reduced as order-
preserving int64 keys (a float's bits, with every bit but the sign flipped for negatives: 5 Gcand/s). As in
the C++ kernel the minimum is taken per 64-wide chunk, and only the first chunk holding the overall minimum
is rescanned for its first index: the smallest argmin, with no float equality and no index bookkeeping in
the hot loop.
"""

import numpy as np
from numba import njit

_CHUNK = 64
_MAX_KEY = np.int64(0x7FFFFFFFFFFFFFFF)
_LOW_BITS = np.int64(0x7FFFFFFFFFFFFFFF)


@njit(inline="always")
def _key(bits):  # pragma: no cover - compiled
    """Map float64 bits to an int64 with the same order (for non-NaN values; -0.0 must not occur)."""
    return bits ^ ((bits >> 63) & _LOW_BITS)


@njit(inline="always")
def _argmin_sum(row, dv, lo, hi, sums, chunk_keys):  # pragma: no cover - compiled
    """(min, first argmin) of row[j] + dv[j] over j in [lo, hi)."""
    count = hi - lo
    s = sums[:count]
    r = row[lo:hi]
    d = dv[lo:hi]
    for j in range(count):
        s[j] = r[j] + d[j] + 0.0  # + 0.0 turns -0.0 into +0.0, which the keys would order below +0.0
    bits = s.view(np.int64)
    best = _MAX_KEY
    chunks = 0
    for c0 in range(0, count, _CHUNK):
        cmin = _MAX_KEY
        # A slice indexed from 0: no negative-index wraparound check, so LLVM vectorises the loop.
        chunk = bits[c0 : c0 + _CHUNK]
        for j in range(chunk.size):
            key = _key(chunk[j])
            cmin = key if key < cmin else cmin
        chunk_keys[chunks] = cmin
        chunks += 1
        best = cmin if cmin < best else best
    for c in range(chunks):
        if chunk_keys[c] == best:
            for j in range(c * _CHUNK, count):
                if _key(bits[j]) == best:
                    return s[j], lo + j
    return np.inf, -1  # unreachable


@njit(cache=True, nogil=True)
def _table(cost, max_steps, discount):  # pragma: no cover - compiled; tested through bellman_table
    n = cost.shape[0]
    value = np.full((max_steps + 1, n), np.inf)
    nxt = np.full((max_steps + 1, n), -1, dtype=np.int64)
    # dv = discount * value rounded once (as in C++ and NumPy), so c + dv[k-1, j] is a plain add everywhere.
    dv = value if discount == 1.0 else np.full((max_steps + 1, n), np.inf)
    sums = np.empty(n)
    chunk_keys = np.empty(n // _CHUNK + 1, dtype=np.int64)
    bad_row = -1
    for i in range(n - 2, -1, -1):
        row = cost[i]
        if not np.isfinite(row[i + 1 :].sum()):  # a NaN or +-inf anywhere in the upper row (or an overflow)
            if not np.isfinite(row[i + 1 :]).all():
                bad_row = i
        value[1, i] = row[n - 1]
        nxt[1, i] = n - 1
        if discount != 1.0:
            dv[1, i] = discount * value[1, i]
        for k in range(2, min(max_steps, n - 1 - i) + 1):
            # Row i and dv[k-1] stay in cache: the matrix is read from memory once for all budgets.
            best, arg = _argmin_sum(row, dv[k - 1], i + 1, n - k + 1, sums, chunk_keys)
            value[k, i] = best
            nxt[k, i] = arg
            if discount != 1.0:
                dv[k, i] = discount * best
    return value, nxt, bad_row


def bellman_table(
    cost: np.ndarray, max_steps: int, discount: float = 1.0
) -> tuple[np.ndarray, np.ndarray, int]:
    """See :func:`boss_fast.bellman.bellman_table_reference`; ``cost`` must be C-contiguous float64."""
    value, nxt, bad_row = _table(cost, max_steps, discount)
    return value, nxt, int(bad_row)
