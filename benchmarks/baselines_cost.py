"""Transcription of the published BOSS cost-matrix loop: the baseline ``trajectory_cost`` is measured against.

Written from the algorithm's description in ../shared/BOSS.md and the shape of the reference's loop (no code
copied). As published: for every target j, stack the states and velocities of every i < j, form the Euler
estimates x_i + (t_j - t_i) v_i in one tensor op, then reduce each pair separately and add it to a NumPy
table, one host sync per (i, j) entry. The arithmetic is the input's dtype (float32 for float32
trajectories), like the reference.
"""

from __future__ import annotations

import numpy as np
import torch


def published_pair_loop_cost(states: torch.Tensor, velocities: torch.Tensor, times: np.ndarray) -> np.ndarray:
    """cost[i, j] = mean over samples of ||x_j - (x_i + (t_j - t_i) v_i)||^2, one pair at a time.

    As in the reference, the trajectory is a Python list of per-time tensors, and for every j the states,
    velocities and time gaps of all i < j are ``torch.stack``-ed (copied) before the Euler estimates are
    formed; each pair's squared error is then reduced and added to the table on the host.

    Args:
        states: (N, B, ...) teacher states; velocities: (N - 1 or N, B, ...) Euler slopes; times: (N,).

    Returns:
        (N, N) float64 numpy, upper triangular.
    """
    n, count = states.shape[0], states.shape[1]
    mid_states = list(states.unbind(0))  # the reference keeps lists of per-time tensors
    slopes = list(velocities.unbind(0))
    t = torch.as_tensor(times, dtype=states.dtype, device=states.device)
    cost = np.zeros((n, n))
    expand = (-1,) + (1,) * (states.ndim - 1)
    with torch.no_grad():
        for j in range(n):
            target = mid_states[j]
            if j == 0:
                continue
            estimates = torch.stack(mid_states[:j]) + torch.stack(slopes[:j]) * torch.stack(
                [t[j] - t[i] for i in range(j)]
            ).view(expand)
            for i in range(j):
                cost[i][j] += float(torch.sum(torch.square(estimates[i] - target)))
    return cost / count
