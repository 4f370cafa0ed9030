"""boss_fast: Bellman Optimal Step-size Straightening (BOSS) for flow-matching models.

Time runs from t = 0 (noise) to t = 1 (data); a velocity model is called as ``velocity(x, t)`` with x of shape
(B, ...) and t of shape (B,), and dx/dt = velocity. diffusers' sigma is 1 - t.

Stage 1 (Nguyen, Nguyen & Nguyen, ICLR 2024): teacher trajectories on a fine grid -> the cost of every
one-step Euler jump -> the exact Bellman DP over it -> a K-step schedule (``objective="local"``); or the DP
over the sampler's own states, which targets the error at t = 1 (Pei et al. 2025; ``objective="global"``,
the default of ``optimal_schedule`` and ``optimal_schedules``).
Stage 2: ``straighten`` fine-tunes the network for exactly those steps.
Sampling: ``sample`` (the plain K-step loop, :mod:`boss_fast.ode`) and ``Sampler`` (static buffers,
torch.compile, CUDA graphs, fused Triton kernels), which also runs the teacher (``mode=`` in
``teacher_trajectory`` and ``cost_matrix``). Adapters: ``boss_fast.integrations``.

Modules are layered (each imports only from its own layer or below; checked by import-linter, see
pyproject.toml): 0 ``_validation``, ``_backends``, ``_runtime``, ``_checkpoint``, ``grids``, ``bellman``;
1 ``ode``; 2 ``kernels``, ``schedule``; 3 ``sampler``; 4 ``trajectories``; 5 ``cost``, ``own_state``,
``search``, ``straighten``; then the edge: ``integrations``, ``models``, ``metrics``, ``report``, ``demo``,
``cli``.
"""

from boss_fast._backends import dp_backends
from boss_fast.bellman import BellmanPath, bellman_path, bellman_paths
from boss_fast.cost import trajectory_cost, trajectory_cost_sums
from boss_fast.grids import edm_grid, shifted_grid, uniform_grid
from boss_fast.ode import Trajectory, cfg_combine, cfg_pair, euler_update, guided_velocity, ode_step, sample
from boss_fast.own_state import OwnStateTable, own_state_paths, own_state_table
from boss_fast.sampler import Sampler
from boss_fast.schedule import (
    Schedule,
    ScheduleSet,
    interpolate_schedule,
    schedule_from_cost,
    schedules_from_cost,
)
from boss_fast.search import cost_matrix, optimal_schedule, optimal_schedules
from boss_fast.straighten import (
    StraighteningPairs,
    StraightenSettings,
    StraightenStats,
    merge_lora,
    straighten,
    straightening_pairs,
)
from boss_fast.trajectories import (
    model_fingerprint,
    reference_solution,
    seeded_noise,
    teacher_trajectory,
)

__version__ = "0.1.0"

__all__ = [
    "BellmanPath",
    "OwnStateTable",
    "Sampler",
    "Schedule",
    "ScheduleSet",
    "StraightenSettings",
    "StraightenStats",
    "StraighteningPairs",
    "Trajectory",
    "bellman_path",
    "bellman_paths",
    "cfg_combine",
    "cfg_pair",
    "cost_matrix",
    "dp_backends",
    "edm_grid",
    "euler_update",
    "guided_velocity",
    "interpolate_schedule",
    "merge_lora",
    "model_fingerprint",
    "ode_step",
    "optimal_schedule",
    "optimal_schedules",
    "own_state_paths",
    "own_state_table",
    "reference_solution",
    "sample",
    "schedule_from_cost",
    "schedules_from_cost",
    "seeded_noise",
    "shifted_grid",
    "straighten",
    "straightening_pairs",
    "teacher_trajectory",
    "trajectory_cost",
    "trajectory_cost_sums",
    "uniform_grid",
]
