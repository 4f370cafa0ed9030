"""A ComfyUI node pack: the "BOSS schedule" node, a schedule file -> ``SIGMAS``.

Install: link (or copy) this folder into ComfyUI's ``custom_nodes`` from the Python environment ComfyUI runs
in, where boss_fast is installed::

    ln -s "$(python -c 'import boss_fast.comfyui as c, os; print(os.path.dirname(c.__file__))')" \\
        ComfyUI/custom_nodes/boss_fast

ComfyUI imports this file as a module and reads ``NODE_CLASS_MAPPINGS`` (its V1 node API: a class with
``INPUT_TYPES``, ``RETURN_TYPES``, ``FUNCTION``, ``CATEGORY``). Nothing here imports ComfyUI. The node's
``SIGMAS`` feed ``SamplerCustom`` / ``SamplerCustomAdvanced`` as any scheduler node's do; for a flow model
(SD3, Flux, Wan) ComfyUI's sigma is diffusers' sigma = 1 - t, and from an empty latent ComfyUI starts at
``sigmas[0]`` from ``sigmas[0] * noise`` (its ``noise_scaling`` for flow models): the start rule "scaled".
"""

from __future__ import annotations

import hashlib
import os

import torch

from boss_fast._validation import check_start
from boss_fast.schedule import SCHEDULE_FORMAT, SET_FORMAT, Schedule, ScheduleSet, read_json

__all__ = [
    "COMFYUI_START",
    "NODE_CLASS_MAPPINGS",
    "NODE_DISPLAY_NAME_MAPPINGS",
    "BossSchedule",
    "check_comfyui_start",
    "schedule_sigmas",
]

# ComfyUI's start for flow models (SD3, Flux) from an empty latent: noise_scaling(sigma, noise, latent) =
# sigma * noise + (1 - sigma) * latent with latent = 0 (comfy/model_sampling.py, CONST), so the state at
# sigmas[0] = 1 - t is (1 - t) * noise.
COMFYUI_START = "scaled"


def check_comfyui_start(sched: Schedule) -> str:
    """The start rule of ``sched`` when ComfyUI samples it exactly from an empty latent: "scaled", or any rule
    at t = 0 (where every rule starts from the noise itself). Else a ValueError naming the rule."""
    return check_start(
        sched,
        COMFYUI_START,
        "ComfyUI (a flow model from an empty latent: sigmas[0] * noise)",
        "search with --start scaled for ComfyUI (SearchSettings(start='scaled'))",
    )


def schedule_sigmas(path: str | os.PathLike, steps: int = 0, denoise: float = 1.0) -> torch.Tensor:
    """The node's output: float32 sigmas (1 - times), descending, ending in 0, for ``steps`` steps of the
    schedule or set in ``path``.

    ``steps``: 0 for the file's own K (a single schedule; a set needs a K). A K outside a set comes from the
    set's ``resample`` (the DP re-solved on its cost table, or interpolated). ``denoise`` as ComfyUI's Align
    Your Steps node: below 1, the last ``round(steps x denoise)`` steps of the ``steps``-step schedule (the
    low-noise end, for img2img); 0 or below gives no sigmas.

    The full schedule (``denoise`` 1) starts from ComfyUI's state at ``sigmas[0]``, ``sigmas[0] * noise``: a
    schedule searched with another start rule that starts above t = 0 is refused by name
    (:func:`check_comfyui_start`). Below 1 the sampling starts from ComfyUI's noised input image instead.

    Raises:
        ValueError: a file that is neither a schedule nor a set, a set without ``steps``, a single schedule
            asked for another K, a schedule that does not end at sigma 0 (t = 1), a full schedule whose start
            rule ComfyUI does not follow.
    """
    source = os.fspath(path)
    doc = read_json(source, "schedule")
    kind = doc.get("format") if isinstance(doc, dict) else None
    if kind == SET_FORMAT:
        if steps < 1:
            raise ValueError(
                f"{source} holds a schedule set (K = 1..{len(doc['budgets'])}): set steps to a K"
            )
        sched = ScheduleSet.from_dict(doc, source).resample(steps)
    elif kind == SCHEDULE_FORMAT:
        sched = Schedule.from_dict(doc, source)
        if steps not in (0, sched.steps):
            raise ValueError(
                f"{source} is a {sched.steps}-step schedule, asked for {steps} steps (use a schedule set for "
                "other budgets, or steps 0)"
            )
    else:
        raise ValueError(f"{source}: neither a boss_fast schedule nor a schedule set (format {kind!r})")
    if sched.times[-1] != 1.0:
        raise ValueError(f"{source}: the schedule ends at t = {sched.times[-1]!r}, not at sigma 0 (t = 1)")
    sigmas = torch.tensor(sched.sigmas().tolist(), dtype=torch.float32)
    if denoise >= 1.0:
        try:
            check_comfyui_start(sched)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
        return sigmas
    if denoise <= 0.0:
        return torch.zeros(0, dtype=torch.float32)
    return sigmas[-(round(sched.steps * denoise) + 1) :].clone()


class BossSchedule:
    """ComfyUI node "BOSS schedule": a boss_fast schedule or set file, ``steps`` and ``denoise`` -> SIGMAS
    (:func:`schedule_sigmas`).

    Example:
        >>> BossSchedule.RETURN_TYPES, BossSchedule.FUNCTION
        (('SIGMAS',), 'get_sigmas')
    """

    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "get_sigmas"
    CATEGORY = "sampling/custom_sampling/schedulers"
    DESCRIPTION = (
        "Bellman-optimal steps (boss_fast): sigmas = 1 - times from a schedule or schedule-set file."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802  (the name ComfyUI calls)
        return {
            "required": {
                "schedule_file": ("STRING", {"default": "", "multiline": False}),
                "steps": ("INT", {"default": 0, "min": 0, "max": 10000}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        }

    @classmethod
    def IS_CHANGED(cls, schedule_file: str, steps: int, denoise: float) -> str:  # noqa: N802
        """The file's SHA-256, so an edited file re-runs the node (ComfyUI caches on the inputs)."""
        try:
            with open(schedule_file, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        except OSError:
            return ""

    def get_sigmas(self, schedule_file: str, steps: int, denoise: float) -> tuple[torch.Tensor]:
        return (schedule_sigmas(schedule_file, steps, denoise),)


NODE_CLASS_MAPPINGS = {"BossSchedule": BossSchedule}
NODE_DISPLAY_NAME_MAPPINGS = {"BossSchedule": "BOSS schedule"}
