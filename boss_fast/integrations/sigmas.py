"""diffusers' sigma conventions without diffusers: the sigmas that make its stock flow-match scheduler step at
a schedule's times, and the scheduler config keys that no Euler schedule can honour.

This module imports no diffusers, so ``diffusers_sigmas`` works without the ``diffusers`` extra (e.g. to write
the sigmas into a serving config). ``boss_fast.integrations.diffusers`` re-exports it.

diffusers' ``FlowMatchEulerDiscreteScheduler`` maps any ``sigmas=`` it is given through its shift before
stepping: statically ``s * sigma / (1 + (s - 1) * sigma)``, or with dynamic shifting (``mu``)
``e^mu / (e^mu + 1 / sigma - 1)`` (``mu`` for ``time_shift_type="linear"``), then appends sigma = 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from boss_fast._validation import as_times, check_choice, check_float
from boss_fast.schedule import Schedule

__all__ = ["REMAPPING_KEYS", "STEPPING_KEYS", "comfyui_text", "diffusers_sigmas", "refuse_stepping_keys"]

# Config keys of the stock scheduler that change the step itself, not just which sigmas it visits:
# ``invert_sigmas`` (Mochi) steps from sigma 0 up to 1, ``stochastic_sampling`` re-noises at every step. A
# BOSS schedule is the Euler ODE path between its times, so neither ``diffusers_sigmas`` nor ``BossScheduler``
# can honour them: both refuse them (refuse_stepping_keys).
STEPPING_KEYS = ("invert_sigmas", "stochastic_sampling")
# Config keys that remap the sigmas after the shift. ``diffusers_sigmas`` cannot invert them (Karras,
# exponential and beta sigmas discard the given values; shift_terminal rescales by the last one), so it
# refuses them; ``BossScheduler`` never uses the default sigmas they shape, so it records them (a swap back to
# the stock scheduler restores them) and steps at the schedule.
REMAPPING_KEYS = ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def refuse_stepping_keys(config: Mapping[str, Any], who: str) -> None:
    """Raise ValueError naming the first of ``STEPPING_KEYS`` set in ``config`` (``who``: the caller)."""
    for key in STEPPING_KEYS:
        if config.get(key):
            raise ValueError(
                f"the scheduler config sets {key}={config.get(key)!r}, which changes the step itself; {who} "
                "steps the deterministic Euler ODE path of a BOSS schedule and cannot honour it"
            )


def diffusers_sigmas(
    sched: Schedule | Sequence[float] | np.ndarray,
    shift: float | None = None,
    mu: float | None = None,
    *,
    time_shift_type: str = "exponential",
    config: Mapping[str, Any] | None = None,
) -> list[float]:
    """Sigmas for diffusers' stock ``FlowMatchEulerDiscreteScheduler`` that step at ``sched``'s times.

    That scheduler shifts any ``sigmas=`` it is given (by ``shift``, or with dynamic shifting by ``mu``) and
    appends a terminal 0; these are the pre-images, so after its shift it steps at ``1 - times`` (up to its
    float32 arithmetic). Use as ``pipe(..., num_inference_steps=K, sigmas=diffusers_sigmas(sched, ...))``.

    Args:
        sched: a ``Schedule`` or its (K + 1,) times (t = 0 noise, t = 1 data).
        shift: the scheduler's static shift (``config.shift``; SD3 uses 3.0).
        mu: the dynamic shift the pipeline passes when ``use_dynamic_shifting`` is on (Flux, SD3.5 at some
            resolutions): ``calculate_shift(image_seq_len, ...)``.
        time_shift_type: the dynamic shift's form, "exponential" (default) or "linear".
        config: a scheduler config (``pipe.scheduler.config``) to read ``shift``, ``use_dynamic_shifting`` and
            ``time_shift_type`` from, and to check for options this cannot invert.

    Returns:
        K floats, decreasing, in (0, 1].

    Raises:
        ValueError: the schedule does not end at t = 1 (the scheduler always ends at sigma 0), both or neither
            of shift and mu for a dynamic config, a non-positive shift or mu, or a config with
            ``shift_terminal``, Karras / exponential / beta sigmas, ``invert_sigmas`` or
            ``stochastic_sampling``.

    Example:
        >>> diffusers_sigmas([0.0, 0.5, 1.0], shift=3.0)
        [1.0, 0.25]
    """
    times = sched.times if isinstance(sched, Schedule) else as_times(sched, "times")
    if times[-1] != 1.0:
        raise ValueError(
            f"diffusers' flow-match scheduler always ends at sigma 0 (t = 1); this schedule ends at "
            f"t = {float(times[-1])!r}"
        )
    dynamic = False
    if config is not None:
        for key in REMAPPING_KEYS:
            if config.get(key):
                raise ValueError(
                    f"the scheduler config sets {key}={config.get(key)!r}, which remaps sigmas in a way "
                    "diffusers_sigmas does not invert; use BossScheduler.from_schedule instead"
                )
        refuse_stepping_keys(config, "diffusers_sigmas")
        dynamic = bool(config.get("use_dynamic_shifting", False))
        time_shift_type = config.get("time_shift_type", "exponential")
        if shift is None and not dynamic:
            shift = config.get("shift", 1.0)
    if dynamic and mu is None:
        raise ValueError("the config uses dynamic shifting: pass the pipeline's mu")
    if shift is not None and mu is not None:
        raise ValueError("pass shift (static shifting) or mu (dynamic shifting), not both")
    target = 1.0 - times[:-1]  # the sigmas the scheduler must step at, > 0
    if mu is not None:
        return _invert_dynamic_shift(target, check_float(mu, "mu"), time_shift_type).tolist()
    return _invert_static_shift(target, 1.0 if shift is None else check_float(shift, "shift")).tolist()


def _invert_dynamic_shift(target: np.ndarray, mu: float, time_shift_type: str) -> np.ndarray:
    check_choice(time_shift_type, ("exponential", "linear"), "time_shift_type")
    scale = math.exp(mu) if time_shift_type == "exponential" else mu
    if scale <= 0:
        raise ValueError(f"a linear time shift needs mu > 0, got {mu}")
    # sigma' = scale / (scale + (1 / sigma - 1))  <=>  sigma = 1 / (1 + scale * (1 / sigma' - 1))
    return 1.0 / (1.0 + scale * (1.0 / target - 1.0))


def _invert_static_shift(target: np.ndarray, shift: float) -> np.ndarray:
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    # sigma' = s sigma / (1 + (s - 1) sigma)  <=>  sigma = sigma' / (s - (s - 1) sigma')
    return target / (shift - (shift - 1.0) * target)


def comfyui_text(sigmas: Sequence[float] | np.ndarray) -> str:
    """Sigmas as one line every ComfyUI sigma-text node reads back exactly: ``", "``-separated plain decimals.

    Each value is the shortest positional decimal (no exponent, no trailing point) that rounds to the same
    float32, the dtype of ComfyUI's ``SIGMAS``: 1e-6 is ``0.000001``, 1.0 is ``1``. So ComfyUI's stock
    ``ManualSigmas`` (which extracts ``[-+]?\\d*\\.*\\d+`` runs, splitting ``5e-05`` into 5 and -5) and
    KJNodes' ``CustomSigmas`` (which splits on ``", "``) both parse the float32 sigmas exactly.

    Example:
        >>> comfyui_text([1.0, 0.31999999999999995, 4.999999999999449e-05, 0.0])
        '1, 0.32, 0.00005, 0'
    """
    values = np.asarray(sigmas, dtype=np.float64)
    if values.ndim != 1 or not np.all(np.isfinite(values)):
        raise ValueError("sigmas must be a 1-D sequence of finite numbers")
    return ", ".join(
        np.format_float_positional(np.float32(v), unique=True, trim="-") for v in values.tolist()
    )
