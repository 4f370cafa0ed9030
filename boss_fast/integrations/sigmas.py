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

from boss_fast._validation import as_times, check_choice, check_float, check_start
from boss_fast.schedule import Schedule

__all__ = [
    "FLOW_MATCH_KEYS",
    "FLOW_MATCH_SCHEDULERS",
    "REMAPPING_KEYS",
    "STEPPING_KEYS",
    "check_diffusers_start",
    "check_flow_match_config",
    "comfyui_text",
    "diffusers_sigmas",
    "refuse_stepping_keys",
]

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
# The flow-match schedulers whose sigma shift this module inverts (``_class_name`` of a scheduler config), and
# every key their configs hold (FlowMatchEulerDiscreteScheduler's __init__ in diffusers 0.3x-0.42, plus
# BossScheduler's ``times``). Another scheduler's config (EulerDiscreteScheduler: betas, prediction_type, ...)
# shifts nothing this way: inverting it would print sigmas for a shift it does not apply, so it is refused.
FLOW_MATCH_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler", "BossScheduler")
FLOW_MATCH_KEYS = frozenset(
    {
        "num_train_timesteps",
        "shift",
        "use_dynamic_shifting",
        "base_shift",
        "max_shift",
        "base_image_seq_len",
        "max_image_seq_len",
        "invert_sigmas",
        "time_shift_type",
        "times",
        *STEPPING_KEYS,
        *REMAPPING_KEYS,
    }
)


# A diffusers pipeline's txt2img latents are the unscaled noise whatever the first sigma (prepare_latents
# draws them, and init_noise_sigma is 1 for the flow-match schedulers): its start rule is "noise".
DIFFUSERS_START = "noise"


def check_diffusers_start(sched: object) -> str:
    """The start rule of ``sched`` (a ``Schedule``; plain times are "noise") when a diffusers pipeline samples
    it exactly: "noise" or "zero" (the noise itself at the first sigma, 1 - times[0]), or "scaled" at t = 0.
    Else a ValueError naming the rule (``boss_fast._validation.check_start``)."""
    return check_start(
        sched,
        DIFFUSERS_START,
        "a diffusers pipeline (its txt2img latents, whatever the first sigma)",
        "search with --start noise for diffusers (SearchSettings(start='noise')), or pass the pipeline "
        "latents=(1 - t) * noise yourself with the schedule's plain times (sched.times)",
    )


def refuse_stepping_keys(config: Mapping[str, Any], who: str) -> None:
    """Raise ValueError naming the first of ``STEPPING_KEYS`` set in ``config`` (``who``: the caller)."""
    for key in STEPPING_KEYS:
        if config.get(key):
            raise ValueError(
                f"the scheduler config sets {key}={config.get(key)!r}, which changes the step itself; {who} "
                "steps the deterministic Euler ODE path of a BOSS schedule and cannot honour it"
            )


def check_flow_match_config(config: object) -> Mapping[str, Any]:
    """Return ``config`` if it is a flow-match scheduler's config, else raise naming what is not.

    A mapping whose ``_class_name`` (when present) is one of :data:`FLOW_MATCH_SCHEDULERS` and whose keys
    (besides diffusers' private ``_``-prefixed ones) are all in :data:`FLOW_MATCH_KEYS`.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a scheduler config (a mapping), got {type(config).__name__}")
    name = config.get("_class_name")
    if name is not None and name not in FLOW_MATCH_SCHEDULERS:
        raise ValueError(
            f"the scheduler config's _class_name is {name!r}, not a flow-match scheduler "
            f"({', '.join(FLOW_MATCH_SCHEDULERS)}): diffusers_sigmas inverts only their shift"
        )
    foreign = sorted(k for k in config if not str(k).startswith("_") and k not in FLOW_MATCH_KEYS)
    if foreign:
        raise ValueError(
            f"the scheduler config has key(s) {', '.join(map(repr, foreign[:3]))} that no flow-match "
            "scheduler has: not a FlowMatchEulerDiscreteScheduler config"
        )
    return config


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

    A schedule that starts above t = 0 gives a first sigma below 1, and the pipeline's txt2img latents (the
    unscaled noise) are then the state there: the start rule "noise" (and "zero") exactly; "scaled" is
    refused.

    Args:
        sched: a ``Schedule`` or its (K + 1,) times (t = 0 noise, t = 1 data; plain times start from the
            noise itself, the rule "noise").
        shift: the scheduler's static shift (``config.shift``; SD3 uses 3.0).
        mu: the dynamic shift the pipeline passes when ``use_dynamic_shifting`` is on (Flux, SD3.5 at some
            resolutions): ``calculate_shift(image_seq_len, ...)``.
        time_shift_type: the dynamic shift's form, "exponential" (default) or "linear".
        config: a scheduler config (``pipe.scheduler.config``) to read ``shift``, ``use_dynamic_shifting`` and
            ``time_shift_type`` from, and to check for options this cannot invert.

    Returns:
        K floats, decreasing, in (0, 1].

    Raises:
        ValueError: the schedule's start rule is "scaled" with a first time above 0 (a pipeline starts from
            the unscaled noise: :func:`check_diffusers_start`), it does not end at t = 1 (the scheduler always
            ends at sigma 0), both or neither
            of shift and mu for a dynamic config, a non-positive shift or linear mu, a shift or mu so extreme
            that the sigmas (or the scheduler's float32 view of them) are not finite, strictly decreasing and
            in (0, 1] (shift 1e308 or 1e-320, mu 709), another scheduler's config
            (:func:`check_flow_match_config`), a null shift in the config, or a config with
            ``shift_terminal``, Karras / exponential / beta sigmas, ``invert_sigmas`` or
            ``stochastic_sampling``.

    Example:
        >>> diffusers_sigmas([0.0, 0.5, 1.0], shift=3.0)
        [1.0, 0.25]
    """
    times = sched.times if isinstance(sched, Schedule) else as_times(sched, "times")
    check_diffusers_start(sched)
    if times[-1] != 1.0:
        raise ValueError(
            f"diffusers' flow-match scheduler always ends at sigma 0 (t = 1); this schedule ends at "
            f"t = {float(times[-1])!r}"
        )
    dynamic = False
    if config is not None:
        check_flow_match_config(config)
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
            shift = check_float(config.get("shift", 1.0), "the scheduler config's shift")
    if dynamic and mu is None:
        raise ValueError("the config uses dynamic shifting: pass the pipeline's mu")
    if shift is not None and mu is not None:
        raise ValueError("pass shift (static shifting) or mu (dynamic shifting), not both")
    target = 1.0 - times[:-1]  # the sigmas the scheduler must step at, > 0
    if mu is not None:
        return _invert_dynamic(target, check_float(mu, "mu"), time_shift_type)
    return _invert_static(target, 1.0 if shift is None else check_float(shift, "shift"))


def _invert_dynamic(target: np.ndarray, mu: float, time_shift_type: str) -> list[float]:
    check_choice(time_shift_type, ("exponential", "linear"), "time_shift_type")
    scale = _dynamic_scale(mu, time_shift_type)
    with np.errstate(all="ignore"):  # extreme values are checked below, by name
        pre = 1.0 / (1.0 + scale * (1.0 / target - 1.0))
        # sigma' = scale / (scale + (1 / sigma - 1)), as the stock scheduler computes it: in float32
        stepped = np.float32(scale) / (np.float32(scale) + (1.0 / pre.astype(np.float32) - 1.0))
    return _check_sigmas(pre, stepped, target, f"mu = {mu!r} ({time_shift_type} time shift)")


def _invert_static(target: np.ndarray, shift: float) -> list[float]:
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    with np.errstate(all="ignore"):
        pre = _invert_static_shift(target, shift)
        s32, p32 = np.float32(shift), pre.astype(np.float32)
        stepped = s32 * p32 / (1 + (s32 - 1) * p32)  # the stock scheduler's static shift, in float32
    return _check_sigmas(pre, stepped, target, f"shift = {shift!r}")


def _dynamic_scale(mu: float, time_shift_type: str) -> float:
    """e^mu (exponential) or mu (linear): the dynamic shift's factor, refused when float64 cannot hold it."""
    if time_shift_type == "linear":
        if mu <= 0:
            raise ValueError(f"a linear time shift needs mu > 0, got {mu}")
        return mu
    try:
        scale = math.exp(mu)
    except OverflowError:  # mu > 709.78
        raise ValueError(
            f"mu = {mu!r}: e^mu overflows float64 (an exponential time shift needs mu < 709.7)"
        ) from None
    if scale == 0.0:  # mu < -745
        raise ValueError(f"mu = {mu!r}: e^mu underflows to 0 in float64 (every sigma would map to 1)")
    return scale


# How far (relative) the sigmas the stock scheduler steps at may be from the schedule's: its float32
# arithmetic puts sane shifts within ~1 ulp (measured 1.2e-7 at shifts 3 .. 1e9, mu 0.8 .. 80 on a 101-point
# grid); 1e-4 (~840 float32 ulps) leaves room for any honest rounding and refuses shifts where float32 breaks
# down (shift 1e-6: two sigmas merge; mu 87 exponential: e^mu overflows float32).
_STEP_RTOL = 1e-4


def _check_sigmas(pre: np.ndarray, stepped: np.ndarray, target: np.ndarray, what: str) -> list[float]:
    """The pre-images ``pre`` as a list when they are finite, strictly decreasing and in (0, 1], and the
    float32 sigmas ``stepped`` the stock scheduler derives from them with its own shift are within
    ``_STEP_RTOL`` of ``target`` and strictly decreasing; else a ValueError naming ``what`` (the shift).

    An extreme shift leaves no room: 1e308 overflows the first pre-image to inf, 1e-320 rounds every one to
    1.0, mu = 709 (exponential) overflows e^mu in the scheduler's float32 arithmetic.
    """
    refuse = f"{what}: the stock scheduler cannot step at this schedule with this shift ("
    bad = np.flatnonzero(~np.isfinite(pre) | (pre <= 0.0) | (pre > 1.0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{refuse}it would need sigmas[{i}] = {pre[i].item()!r}, outside (0, 1])")
    flat = np.flatnonzero(np.diff(pre) >= 0.0)
    if flat.size:
        i = int(flat[0])
        raise ValueError(f"{refuse}sigmas[{i}] and [{i + 1}] round to the same {pre[i].item()!r})")
    with np.errstate(all="ignore"):  # inf / NaN are refused just below
        error = np.abs(stepped.astype(np.float64) / target - 1.0)
        far = np.flatnonzero(~(error <= _STEP_RTOL) | np.r_[False, ~(np.diff(stepped) < 0)])
    if far.size:
        i = int(far[0])
        raise ValueError(
            f"{refuse}in its float32 arithmetic it would step at sigma {stepped[i].item()!r} instead of "
            f"{target[i].item()!r}, step {i})"
        )
    return pre.tolist()


def _invert_static_shift(target: np.ndarray, shift: float) -> np.ndarray:
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
