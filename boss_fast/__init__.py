"""boss_fast: Bellman Optimal Step-size Straightening (BOSS) for flow-matching models.

Time runs from t = 0 (noise) to t = 1 (data); a velocity model is called as ``velocity(x, t)`` with x of shape
(B, ...) and t of shape (B,), and dx/dt = velocity. diffusers' sigma is 1 - t.

Stage 1 (Nguyen, Nguyen & Nguyen, ICLR 2024): teacher trajectories on a fine grid -> the cost of every
one-step Euler jump -> the exact Bellman DP over it -> a K-step schedule (``objective="local"``); or the DP
over the sampler's own states, which targets the error at t = 1 (Pei et al. 2025; ``objective="global"``,
the default of ``optimal_schedules``, whose knobs live in one ``SearchSettings``).
Stage 2: ``straighten`` fine-tunes the network for exactly those steps.
Sampling: ``sample`` (the plain K-step loop, :mod:`boss_fast.ode`) and ``Sampler`` (static buffers,
torch.compile, CUDA graphs, fused Triton kernels), which also runs the teacher (``mode=`` in
``teacher_trajectory`` and ``cost_matrix``). Adapters: ``boss_fast.integrations``.

Modules are layered (each imports only from its own layer or below; checked by import-linter, see
pyproject.toml): 0 ``_validation``, ``_backends``, ``_runtime``, ``_identity``, ``_header``, ``_checkpoint``,
``grids``, ``bellman``;
1 ``ode``; 2 ``kernels``, ``schedule``; 3 ``sampler``; 4 ``trajectories``; 5 ``cost``, ``global_objective``,
``search``, ``straighten``; then the edge: ``integrations``, ``models``, ``metrics``, ``report``, ``demo``,
``cli``.
"""

from boss_fast._backends import dp_backends
from boss_fast._identity import model_fingerprint
from boss_fast.bellman import bellman_paths
from boss_fast.grids import edm_grid, shifted_grid, uniform_grid
from boss_fast.ode import Trajectory, cfg_pair, guided_velocity, sample
from boss_fast.sampler import Sampler
from boss_fast.schedule import Schedule, ScheduleSet, interpolate_schedule, schedules_from_cost
from boss_fast.search import SearchBill, SearchSettings, cost_matrix, optimal_schedules, search_bill
from boss_fast.straighten import StraightenSettings, StraightenStats, merge_lora, straighten
from boss_fast.trajectories import reference_solution, seeded_noise, teacher_trajectory

__version__ = "0.1.0"

# What a user needs: one entry per job (search, straighten, sample, the DP, the cost), the settings and
# result types they return, grids, guidance. The pieces under them stay public in their modules
# (boss_fast.bellman.bellman_path, boss_fast.cost.trajectory_cost, boss_fast.global_objective.global_table,
# boss_fast.ode.ode_step, boss_fast.straighten.straightening_pairs, ...; docs/api.md lists them).
__all__ = [
    "Sampler",
    "Schedule",
    "ScheduleSet",
    "SearchBill",
    "SearchSettings",
    "StraightenSettings",
    "StraightenStats",
    "Trajectory",
    "bellman_paths",
    "cfg_pair",
    "cost_matrix",
    "dp_backends",
    "edm_grid",
    "guided_velocity",
    "interpolate_schedule",
    "merge_lora",
    "model_fingerprint",
    "optimal_schedules",
    "reference_solution",
    "sample",
    "schedules_from_cost",
    "search_bill",
    "seeded_noise",
    "shifted_grid",
    "straighten",
    "teacher_trajectory",
    "uniform_grid",
]
