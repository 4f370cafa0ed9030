"""The BOSS cost matrix (stage 1, step 3): the error of one Euler jump i -> j against the teacher.

For grid times t_0 < ... < t_{N-1}, teacher states x_i and Euler slopes v_i = v(x_i, t_i), and i < j::

    e_ij = x_j - (x_i + (t_j - t_i) v_i)
    cost[i, j] = mean over samples of ||e_ij||^2      metric "l2sq" (BOSS, squared L2 over all pixels)
    cost[i, j] = mean over samples of ||e_ij||        metric "l2"   (GITS)

and 0 on and below the diagonal. With an Euler teacher cost[i, i+1] is 0 up to the teacher's rounding.

How it is computed without a Python loop over pairs, and without cancellation. Expanding ||e_ij||^2 as
||x_j - x_i||^2 - 2 (t_j - t_i) <x_j - x_i, v_i> + ... subtracts numbers of size ||x||^2 to get one of size
||e||^2, which near the diagonal is ~1e-10 of it: the result is noise. Instead write e_ij with quantities
that are themselves small. With h_m = t_{m+1} - t_m, the teacher's local defect delta_m = (x_{m+1} - x_m)
- h_m v_m (0 for an Euler teacher up to rounding, O(h^2) otherwise) and the slope increments
w_k = v_{k+1} - v_k (O(h))::

    e_ij = sum_{m=i}^{j-1} z_m,   z_m = delta_m + (t_j - t_{m+1}) w_m       (w_{j-1} has weight 0)

so ||e_ij||^2 is a sum of Gram products <delta, delta>, <delta, w>, <w, w> with weights that are
partial sums of step sizes. The Gram matrices are three float64 GEMMs over the (N - 1, F) and (N - 2, F)
bases (F = samples x pixels for "l2sq", one Gram per sample for "l2"), streamed over feature tiles, so the
trajectory is read once; the rest is O(N^2) cumulative sums, each accumulated outward from the diagonal so
every partial sum is of the size of the entries it adds. The result matches the direct float64 definition
to a few ulps relative on every entry, including the near-diagonal ones (tests/test_cost.py).

Pure maths on given trajectories: :func:`trajectory_cost_sums` returns per-batch SUMS over samples (float64)
and a count, which :func:`boss_fast.search.cost_matrix` streams and reduces (one process, a resumed process
and a torchrun job reduce the same (sum, count)).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from boss_fast._validation import METRICS, START_RULES, as_times, check_choice
from boss_fast.ode import start_state

__all__ = ["start_cost_sums", "trajectory_cost", "trajectory_cost_sums"]

# float64 working set of one feature tile (states, velocities and the basis). Measured on the 2-core dev
# box at 101 x 307,200 (float32 in): 1 MiB 0.30 s, 2 MiB 0.22 s, 4 MiB 0.20 s, 8 MiB 0.19 s, 16+ MiB no
# better: the GEMMs need long tiles, the tile must stay in cache.
_CHUNK_BYTES = 8 << 20
# Working set of the O(N^2) pair stage per group of samples for "l2" (about 16 (b, N, N) float64 arrays).
_PAIR_BYTES = 256 << 20
# Row panels of the symmetric Gram product (see _basis_grams).
_PANELS = 4

# ---------------------------------------------------------------------------------------------- kernels


def _basis_grams(
    states: torch.Tensor, velocities: torch.Tensor, h: torch.Tensor, starts: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """Gram matrices of the small basis delta_0..delta_{K-1}, w_0..w_{K-2}, for each of b groups.

    Args:
        states: (N, b, D) any floating dtype; velocities: (K, b, D) with K = N - 1; h: (K,) float64 steps.
        starts: optional (K, b, D) start states a_i of the jumps; then also the products of the gaps
            g_i = x_i - a_i with the basis (the tiling, hence the basis Grams' bits, do not depend on it).

    Returns:
        float64 views on the states' device: <delta, delta> (b, K, K), <delta, w> (b, K, K - 1) and
        <w, w> (b, K - 1, K - 1), each group's products over its D features; with ``starts`` also
        <g, delta> (b, K, K), <g, w> (b, K, K - 1) and <g_i, g_i> (b, K).
    """
    n, b, d = states.shape
    k = n - 1
    rows = 2 * k - 1
    # Tiles of (groups, N, columns) in float64 within _CHUNK_BYTES (about 4 such arrays live at once);
    # columns first, so that the GEMMs stay long (>= 2048 columns when D allows) for "l2"'s many groups.
    per_column = 8 * 4 * n
    groups = max(1, min(b, _CHUNK_BYTES // (per_column * min(d, 2048))))
    step = min(d, max(1, _CHUNK_BYTES // (per_column * groups)))
    opts = {"dtype": torch.float64, "device": states.device}
    gram = torch.zeros((b, rows, rows), **opts)
    basis = torch.empty((groups, rows, step), **opts)  # reused: [delta; w] of one tile
    if starts is not None:
        gap_gram = torch.zeros((b, k, rows), **opts)
        gap_norm = torch.zeros((b, k), **opts)
    hh = h.view(1, k, 1)
    # The Gram is symmetric: GEMM each panel of rows only against itself and the rows after it, then
    # mirror. 4 panels do 62% of the full product's flops (0.21 s -> 0.13 s at 199 x 307,200).
    edges = [round(i * rows / _PANELS) for i in range(_PANELS + 1)]
    panels = [(r0, r1) for r0, r1 in zip(edges[:-1], edges[1:], strict=True) if r1 > r0]
    for s0 in range(0, b, groups):
        s1 = min(b, s0 + groups)
        for c0 in range(0, d, step):
            c1 = min(d, c0 + step)
            x = states[:, s0:s1, c0:c1].to(torch.float64).transpose(0, 1)  # (g, N, c)
            v = velocities[:, s0:s1, c0:c1].to(torch.float64).transpose(0, 1)  # (g, K, c)
            tile = basis[: s1 - s0, :, : c1 - c0]
            # x[1:] - x[:-1] is exact for float32 inputs. Nothing in place on x, v: float64 ones are views.
            delta = torch.sub(x[:, 1:], x[:, :-1], out=tile[:, :k]).addcmul_(hh, v, value=-1.0)
            torch.sub(v[:, 1:], v[:, :-1], out=tile[:, k:])
            for r0, r1 in panels:
                gram[s0:s1, r0:r1, r0:].baddbmm_(tile[:, r0:r1], tile[:, r0:].transpose(1, 2))
            if starts is not None:
                gap = x[:, :k] - starts[:, s0:s1, c0:c1].to(torch.float64).transpose(0, 1)  # (g, K, c)
                gap_gram[s0:s1].baddbmm_(gap, tile.transpose(1, 2))
                gap_norm[s0:s1] += torch.einsum("gkc,gkc->gk", gap, gap)
            del delta
    gram = torch.triu(gram) + torch.triu(gram, 1).transpose(1, 2)
    grams = (gram[:, :k, :k], gram[:, :k, k:], gram[:, k:, k:])
    if starts is None:
        return grams
    return (*grams, gap_gram[:, :, :k], gap_gram[:, :, k:], gap_norm)


def _partial_rows(a: torch.Tensor) -> torch.Tensor:
    """(b, K, K) -> (b, K, K + 1): ``out[m, j] = sum_{k = m+1}^{j-1} a[m, k]``, summed outward from m."""
    return F.pad(torch.cumsum(torch.triu(a, 1), dim=-1), (1, 0))


def _weighted(rows: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """(b, K, K + 1) -> (b, K, K + 1): ``out[m, j] = sum_{l < j} h_l rows[m, l]``.

    With rows = _partial_rows(a) this is ``sum_{m < k < j} (t_j - t_{k+1}) a[m, k]``: the step-size weight
    t_j - t_{k+1} = h_{k+1} + ... + h_{j-1} is distributed over the sum, never formed as t_j * sum - ...
    """
    return F.pad(torch.cumsum(rows[..., :-1] * h, dim=-1), (1, 0))


def _gap_terms(g_gd: torch.Tensor, g_gw: torch.Tensor, g_gg: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What gaps g_i = x_i - a_i between targets and starts add to ||e_ij||^2, (b, K, N) float64.

    With starts a_i, e_ij = x_j - (a_i + (t_j - t_i) v_i) = g_i + e0_ij, where e0_ij = sum_{m=i}^{j-1} z_m is
    the teacher-start error of ``_pair_sq_errors``; so ||e_ij||^2 = ||e0_ij||^2 + ||g_i||^2
    + 2 sum_{m=i}^{j-1} (<g_i, delta_m> + (t_j - t_{m+1}) <g_i, w_m>). Entry [i, j] holds the last two terms
    for i < j, 0 elsewhere; the sums over m run outward from m = i like the others.
    """
    k = t.shape[0] - 1
    h = t[1:] - t[:-1]
    g_gw = F.pad(g_gw, (0, 1))  # w_{K-1} = 0, as in _pair_sq_errors
    from_i = F.pad(torch.cumsum(torch.triu(g_gd), dim=-1), (1, 0))  # [i, j] = sum_{m=i}^{j-1} <g_i, delta_m>
    rows = F.pad(torch.cumsum(torch.triu(g_gw), dim=-1), (1, 0))
    cross = from_i + _weighted(rows, h)
    above = torch.arange(k + 1, device=t.device)[None, :] > torch.arange(k, device=t.device)[:, None]
    return torch.where(above, g_gg[..., None] + 2.0 * cross, 0.0)


def _pair_sq_errors(
    g_dd: torch.Tensor,
    g_dw: torch.Tensor,
    g_ww: torch.Tensor,
    t: torch.Tensor,
    gap: torch.Tensor | None = None,
) -> torch.Tensor:
    """Squared Euler-jump errors ||e_ij||^2 from the basis Grams of ``_basis_grams``.

    Args:
        g_dd, g_dw, g_ww: as returned by ``_basis_grams``; t: (N,) float64 on the same device, N = K + 1.
        gap: optional (b, K, N) ``_gap_terms`` of jumps that start off the teacher's states, added before the
            clamp (all zeros leave every bit as without).

    Returns:
        (b, N, N) float64, entry [i, j] = ||e_ij||^2 for i < j, 0 elsewhere (clamped at 0: rounding).
    """
    b = g_dd.shape[0]
    k = t.shape[0] - 1
    h = t[1:] - t[:-1]
    # Pad w with w_{K-1} = 0: its weight t_j - t_K is 0 for the only j (= K) where it would appear.
    g_dw = F.pad(g_dw, (0, 1))
    g_ww = F.pad(g_ww, (0, 1, 0, 1))
    # With z_m = delta_m + c_m w_m and c_m = t_j - t_{m+1}, ||e_ij||^2 = sum_{m=i}^{j-1} q[m, j],
    # q[m, j] = <z_m, z_m> + 2 sum_{m < k < j} <z_m, z_k>; the four pieces of <z_m, z_k> below.
    r_dd = _partial_rows(g_dd)
    s_dw = _weighted(_partial_rows(g_dw), h)
    r_wd = _partial_rows(g_dw.transpose(1, 2))
    s_ww = _weighted(_partial_rows(g_ww), h)
    c = t[None, :] - t[1:, None]  # (K, N): c[m, j] = t_j - t_{m+1}, >= 0 exactly where j > m
    diag = torch.diagonal
    q = (
        diag(g_dd, dim1=1, dim2=2)[..., None]
        + c * (2.0 * diag(g_dw, dim1=1, dim2=2)[..., None] + c * diag(g_ww, dim1=1, dim2=2)[..., None])
        + 2.0 * (r_dd + s_dw + c * (r_wd + s_ww))
    )
    above = torch.arange(k + 1, device=t.device)[None, :] > torch.arange(k, device=t.device)[:, None]
    q = torch.where(above, q, 0.0)  # keep m < j only
    # Sum q over m = i .. j-1 from m = j - 1 down (entries m >= j are 0): outward from the diagonal again.
    e = torch.flip(torch.cumsum(torch.flip(q, (1,)), dim=1), (1,))
    if gap is not None:
        e = e + gap
    out = torch.zeros((b, k + 1, k + 1), dtype=torch.float64, device=t.device)
    out[:, :k, :] = e
    return out.clamp_min_(0.0)


def _group_sq_errors(
    x: torch.Tensor, v: torch.Tensor, a: torch.Tensor | None, h: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """(b, N, N) squared jump errors of b feature groups: x (N, b, D), v and a (N - 1, b, D) or a None."""
    if a is None:
        return _pair_sq_errors(*_basis_grams(x, v, h), t)
    g_dd, g_dw, g_ww, g_gd, g_gw, g_gg = _basis_grams(x, v, h, a)
    return _pair_sq_errors(g_dd, g_dw, g_ww, t, _gap_terms(g_gd, g_gw, g_gg, t))


def _cost_sums_kernel(
    states: torch.Tensor,
    velocities: torch.Tensor,
    times: np.ndarray,
    metric: str,
    starts: torch.Tensor | None = None,
) -> np.ndarray:
    """Sum over the B samples of the per-sample cost, (N, N) float64 numpy. Assumes valid input.

    Args:
        states: (N, B, ...); velocities: (N - 1, B, ...) (extra rows ignored); times: (N,) float64;
        starts: None (jumps start at states[i]) or (N - 1, B, ...) start states.
    """
    n, bsz = states.shape[0], states.shape[1]
    t = torch.as_tensor(times, dtype=torch.float64, device=states.device)
    h = t[1:] - t[:-1]
    x = states.reshape(n, bsz, -1)
    v = velocities[: n - 1].reshape(n - 1, bsz, -1)
    a = None if starts is None else starts.reshape(n - 1, bsz, -1)
    if metric == "l2sq":
        # The mean over samples of per-sample squared norms is 1/B times the squared norm of the flattened
        # (B * D) vector: one Gram over every feature of the batch.
        flat = None if a is None else a.reshape(n - 1, 1, -1)
        total = _group_sq_errors(x.reshape(n, 1, -1), v.reshape(n - 1, 1, -1), flat, h, t)[0]
    else:
        total = torch.zeros((n, n), dtype=torch.float64, device=states.device)
        group = max(1, _PAIR_BYTES // (16 * 8 * n * n))
        for s0 in range(0, bsz, group):
            part = None if a is None else a[:, s0 : s0 + group]
            total += _group_sq_errors(x[:, s0 : s0 + group], v[:, s0 : s0 + group], part, h, t).sqrt_().sum(0)
    return total.cpu().numpy()


# ---------------------------------------------------------------------------------------- public, pure


def _as_trajectory_tensor(a: object, name: str) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(a)
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(a).__name__}")
    if not a.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {a.dtype}")
    if a.ndim < 2:
        raise ValueError(f"{name} must have shape (N, B, ...), got {tuple(a.shape)}")
    return a


def trajectory_cost_sums(
    states: torch.Tensor | np.ndarray,
    velocities: torch.Tensor | np.ndarray,
    times: Sequence[float] | np.ndarray | torch.Tensor,
    metric: str = "l2sq",
    *,
    starts: torch.Tensor | np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """The cost matrix of one batch as (sum over samples, number of samples): the reducible form.

    ``sums / count`` is ``trajectory_cost``; sums of several batches (or processes) add up.

    Args:
        states: (N, B, ...) teacher states, any floating dtype (converted to float64 chunk by chunk).
        velocities: (N, B, ...) or (N - 1, B, ...) Euler slopes v_i at the jumps' starts (a last row is
            ignored).
        times: (N,) strictly increasing grid in [0, 1].
        metric: "l2sq" (BOSS) or "l2" (GITS).
        starts: None (BOSS: jump i starts at the teacher's ``states[i]``) or (N - 1, B, ...) other start
            states a_i, e.g. a sampler's own states: then entry [i, j] measures
            ``states[j] - (a_i + (t_j - t_i) v_i)`` against the target ``states[j]``, and ``velocities`` must
            be the slopes at a_i. Passing ``starts=states[:-1]`` returns the same bits as None.

    Returns:
        sums: (N, N) float64 numpy, strictly upper triangular. count: B.

    Example:
        >>> x = torch.tensor([[[0.0]], [[1.0]], [[2.0]]])  # (N=3, B=1, D=1), a constant velocity 2
        >>> sums, count = trajectory_cost_sums(x, torch.full((2, 1, 1), 2.0), [0.0, 0.5, 1.0])
        >>> float(sums.max()), count
        (0.0, 1)
    """
    states = _as_trajectory_tensor(states, "states")
    velocities = _as_trajectory_tensor(velocities, "velocities")
    t = as_times(times)
    metric = check_choice(metric, METRICS, "metric")
    n = states.shape[0]
    if len(t) != n:
        raise ValueError(f"times has {len(t)} points but states has N = {n}")
    if velocities.shape[0] not in (n, n - 1) or velocities.shape[1:] != states.shape[1:]:
        raise ValueError(
            f"velocities must have shape ({n} or {n - 1}, {', '.join(map(str, states.shape[1:]))}) to match "
            f"states {tuple(states.shape)}, got {tuple(velocities.shape)}"
        )
    if velocities.device != states.device:
        raise ValueError(f"states are on {states.device} but velocities on {velocities.device}")
    if states.shape[1] < 1:
        raise ValueError("states must hold at least one sample (B >= 1)")
    if starts is not None:
        starts = _as_trajectory_tensor(starts, "starts")
        if starts.shape != (n - 1, *states.shape[1:]):
            raise ValueError(
                f"starts must have shape ({n - 1}, {', '.join(map(str, states.shape[1:]))}) to match states "
                f"{tuple(states.shape)}, got {tuple(starts.shape)}"
            )
        if starts.device != states.device:
            raise ValueError(f"states are on {states.device} but starts on {starts.device}")
    sums = _cost_sums_kernel(states, velocities, t, metric, starts)
    bad = np.flatnonzero(~np.isfinite(sums).all(axis=1))
    if bad.size:
        raise ValueError(
            f"states or velocities contain non-finite values (cost row {bad[0]}, t = {t[bad[0]].item()!r})"
        )
    return sums, int(states.shape[1])


def trajectory_cost(
    states: torch.Tensor | np.ndarray,
    velocities: torch.Tensor | np.ndarray,
    times: Sequence[float] | np.ndarray | torch.Tensor,
    metric: str = "l2sq",
) -> np.ndarray:
    """The BOSS cost matrix of one batch of teacher trajectories, (N, N) float64 numpy.

    ``cost[i, j]`` (i < j) is the mean over samples of ``||x_j - (x_i + (t_j - t_i) v_i)||^2`` (metric "l2sq")
    or of its square root ("l2"), summed over all non-batch dimensions; 0 on and below the diagonal. See the
    module docstring for the cancellation-free evaluation. Arguments as ``trajectory_cost_sums``.

    Example:
        >>> x = torch.tensor([[[0.0]], [[1.0]], [[2.0]]])  # (N=3, B=1, D=1), a constant velocity 2
        >>> trajectory_cost(x, torch.full((2, 1, 1), 2.0), [0.0, 0.5, 1.0])
        array([[0., 0., 0.],
               [0., 0., 0.],
               [0., 0., 0.]])
    """
    sums, count = trajectory_cost_sums(states, velocities, times, metric)
    return sums / count


def start_cost_sums(
    states: torch.Tensor | np.ndarray,
    times: Sequence[float] | np.ndarray | torch.Tensor,
    rule: str,
    metric: str = "l2sq",
) -> tuple[np.ndarray, int]:
    """The error of a free start at every grid point, as (sum over samples (N,) float64, number of samples).

    Entry j is ``||start_state(states[0], rule, t_j) - states[j]||^2`` ("l2sq"; "l2": its norm), summed over
    the batch: the state a sampler starting at t_j holds there, against the teacher's (whose ``states[0]`` is
    the noise). No model evaluation. Entry 0 is 0 for "noise" and for "scaled" on a grid from t = 0. With
    :func:`trajectory_cost_sums`'s matrix it prices every (start, knots) path of the local objective: the
    start's error plus the sum of the jumps' (``boss_fast.bellman``'s ``start_costs``).

    Args:
        states: (N, B, ...) teacher states from the noise at ``times[0]``, any floating dtype.
        times: (N,) strictly increasing grid in [0, 1].
        rule: the start rule, "noise" or "scaled" ("zero" is pinned: its only start is entry 0).
        metric: "l2sq" or "l2".

    Example:
        >>> x = torch.tensor([[[1.0]], [[0.5]], [[0.0]]])  # (N=3, B=1, D=1): x_t = 1 - t
        >>> sums, count = start_cost_sums(x, [0.0, 0.5, 1.0], "scaled")
        >>> sums.tolist(), count  # (1 - t) x_0 is the teacher's state here
        ([0.0, 0.0, 0.0], 1)
    """
    states = _as_trajectory_tensor(states, "states")
    t = as_times(times)
    check_choice(rule, START_RULES, "start rule")
    metric = check_choice(metric, METRICS, "metric")
    if len(t) != states.shape[0]:
        raise ValueError(f"times has {len(t)} points but states has N = {states.shape[0]}")
    rows = []
    for j, tj in enumerate(t.tolist()):
        # start_state in the states' dtype, as the sampler forms it; the difference in float64
        per = (start_state(states[0], rule, tj).double() - states[j].double()).flatten(1).square().sum(dim=1)
        rows.append((per.sqrt() if metric == "l2" else per).sum())
    return torch.stack(rows).cpu().numpy(), states.shape[1]  # one device read
