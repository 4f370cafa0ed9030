"""boss_fast: Bellman Optimal Step-size Straightening (BOSS) for flow-matching models.

Time runs from t = 0 (noise) to t = 1 (data); a velocity model is called as ``velocity(x, t)`` with x of shape
(B, ...) and t of shape (B,).
"""

from boss_fast._backends import dp_backends
from boss_fast.bellman import BellmanPath, bellman_path, bellman_paths

__version__ = "0.1.0"

__all__ = ["BellmanPath", "bellman_path", "bellman_paths", "dp_backends"]
