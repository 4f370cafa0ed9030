"""Meta's flow_matching interop: a Schedule as ``ODESolver``'s ``time_grid``, and model wrappers both ways.

flow_matching shares boss_fast's conventions (t = 0 noise, t = 1 data, velocity = d x / d t); its
``ODESolver.sample(x_init, step_size=None, method="euler", time_grid=...)`` steps exactly on the grid, so

    solver = ODESolver(velocity_model=as_model_wrapper(velocity))
    solver.sample(noise, step_size=None, time_grid=time_grid(sched))  # or sched.as_tensor()

is ``bf.sample(velocity, noise, sched)``: ``ODESolver`` starts from ``x_init`` itself at ``time_grid[0]``, the
start rules "noise" and "zero"; :func:`time_grid` refuses a "scaled" schedule that starts above t = 0.
The only difference is t: flow_matching passes one 0-d time for the batch, boss_fast a (B,) tensor in x's
dtype; the wrappers convert. flow_matching is CC BY-NC 4.0 licensed (non-commercial): it is an optional
extra (``pip install 'boss_fast[flow-matching]'``) and none of its code is copied here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from boss_fast._validation import as_times, check_start
from boss_fast.integrations._imports import missing
from boss_fast.schedule import Schedule

try:
    from flow_matching.utils import ModelWrapper
except ImportError as err:  # the optional extra
    raise missing("flow_matching", "flow_matching") from err

__all__ = ["FlowMatchingVelocity", "VelocityWrapper", "as_model_wrapper", "from_model_wrapper", "time_grid"]


def time_grid(
    sched: Schedule | Sequence[float] | np.ndarray,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """The schedule's times as ``ODESolver``'s ``time_grid`` tensor (float64 by default: the exact times;
    torchdiffeq rounds each step to the state's dtype). Raises ValueError on times that are not a schedule,
    and on a schedule whose start rule is "scaled" with a first time above 0: ``ODESolver`` starts from
    ``x_init`` itself (the rule "noise"), and the scaling is the caller's to do."""
    if isinstance(sched, Schedule):
        check_start(
            sched,
            "noise",
            "flow_matching's ODESolver (x_init at time_grid[0])",
            "pass x_init=boss_fast.ode.start_state(noise, 'scaled', t) with time_grid(sched.times)",
        )
        return sched.as_tensor(device=device, dtype=dtype)
    return torch.tensor(as_times(sched, "times").tolist(), dtype=dtype, device=device)


class VelocityWrapper(ModelWrapper):
    """boss_fast's ``velocity(x, t)`` as a flow_matching ``ModelWrapper``: ``forward(x, t, **extras)`` with t
    0-d (ODESolver) or (B,), broadcast to a (B,) tensor in x's dtype. Extras are passed as keywords (a
    velocity without keyword parameters is called as ``velocity(x, t)`` when there are none)."""

    def __init__(self, velocity: Callable[..., torch.Tensor]) -> None:
        if not callable(velocity):
            raise TypeError(f"velocity must be callable as velocity(x, t), got {type(velocity).__name__}")
        super().__init__(velocity if isinstance(velocity, nn.Module) else nn.Identity())
        self.velocity = velocity

    def forward(self, x: torch.Tensor, t: torch.Tensor, **extras: Any) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).to(x.dtype)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        elif t.shape != (x.shape[0],):
            raise ValueError(
                f"t must be 0-d or ({x.shape[0]},) for x of shape {tuple(x.shape)}, got {tuple(t.shape)}"
            )
        return self.velocity(x, t, **extras)


def as_model_wrapper(velocity: Callable[..., torch.Tensor]) -> VelocityWrapper:
    """Wrap ``velocity(x, t)`` for flow_matching's solvers (see :class:`VelocityWrapper`)."""
    return VelocityWrapper(velocity)


class FlowMatchingVelocity(nn.Module):
    """A flow_matching model (``model(x=..., t=..., **extras)``, e.g. a ``ModelWrapper``) as boss_fast's
    ``velocity(x, t)`` with fixed ``extras``, so ``bf.optimal_schedules`` and ``bf.straighten`` run on it.
    t is passed as the (B,) tensor boss_fast gives."""

    def __init__(self, model: Callable[..., torch.Tensor], **extras: Any) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be callable as model(x=..., t=...), got {type(model).__name__}")
        self.model = model
        self.extras = extras

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x=x, t=t, **self.extras)


def from_model_wrapper(model: Callable[..., torch.Tensor], **extras: Any) -> FlowMatchingVelocity:
    """The reverse adapter: see :class:`FlowMatchingVelocity`."""
    return FlowMatchingVelocity(model, **extras)
