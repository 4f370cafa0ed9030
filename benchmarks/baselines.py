"""Transcriptions of the published BOSS reference loops: the baselines our kernels are measured against.

Written from the algorithm's description in ../shared/BOSS.md (no code copied). Kept deliberately as
published (pure Python over a NumPy table, backtracking by float equality) so the speed-up is against what
users of the reference actually run.
"""

from __future__ import annotations

import numpy as np


def published_bellman_dp(cost: np.ndarray, steps: int) -> list[int]:
    """The reference's DP: a Python triple loop filling ``dp[i][k]``, then backtracking by equality.

    As published, the base case is ``dp[:, 1] = cost[:, -1]`` and ``j`` runs to N - 1, so a "k-step" path may
    end with zero-cost self-steps at N - 1 when the diagonal is 0; with a positive diagonal it is exact.
    """
    n = cost.shape[0]
    dp = np.full((n, steps + 1), np.inf)
    dp[:, 1] = cost[:, -1]
    for k in range(2, steps + 1):
        for i in range(n):
            for j in range(i + 1, n):
                dp[i][k] = min(dp[i][k], cost[i][j] + dp[j][k - 1])
    path, i = [0], 0
    for k in range(steps, 1, -1):
        for j in range(i + 1, n):
            if dp[i][k] == cost[i][j] + dp[j][k - 1]:
                path.append(j)
                i = j
                break
    path.append(n - 1)
    return path
