"""A ComfyUI node pack: the "BOSS schedule" node, a schedule file -> ``SIGMAS``.

Install: link (or copy) this folder into ComfyUI's ``custom_nodes`` from the Python environment ComfyUI runs
in, where boss_fast is installed, and put schedule files in ``ComfyUI/models/boss_schedules``::

    ln -s "$(python -c 'import boss_fast.comfyui as c, os; print(os.path.dirname(c.__file__))')" \\
        ComfyUI/custom_nodes/boss_fast
    mkdir -p ComfyUI/models/boss_schedules

ComfyUI imports this file as a module and reads ``NODE_CLASS_MAPPINGS`` (its V1 node API: a class with
``INPUT_TYPES``, ``RETURN_TYPES``, ``FUNCTION``, ``CATEGORY``). Nothing here imports ComfyUI: inside ComfyUI
its ``folder_paths`` module is already loaded (ComfyUI imports it before any custom node), and the pack
registers the ``boss_schedules`` model folder there, whose ``.json`` files the node lists in a drop-down
(``extra_model_paths.yaml`` may add folders under the key ``boss_schedules``). The node's ``SIGMAS`` feed
``SamplerCustom`` / ``SamplerCustomAdvanced`` as any scheduler node's do; for a flow model (SD3, Flux, Wan)
ComfyUI's sigma is diffusers' sigma = 1 - t, and from an empty latent ComfyUI starts at ``sigmas[0]`` from
``sigmas[0] * noise`` (its ``noise_scaling`` for flow models): the start rule "scaled".
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from types import ModuleType

import torch

from boss_fast._validation import check_float, check_int, check_start
from boss_fast.schedule import (
    Schedule,
    ScheduleSet,
    max_budget,
    read_schedule_file,
    schedule_for_steps,
)

__all__ = [
    "COMFYUI_START",
    "NODE_CLASS_MAPPINGS",
    "NODE_DISPLAY_NAME_MAPPINGS",
    "SCHEDULES_FOLDER",
    "BossSchedule",
    "check_comfyui_start",
    "register_schedules_folder",
    "resolve_schedule_file",
    "schedule_sigmas",
]

# The model folder (ComfyUI/models/boss_schedules) and folder_paths key the node lists schedule files from.
SCHEDULES_FOLDER = "boss_schedules"

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


def _check_steps(steps: object) -> int:
    """``steps`` as an int >= 0, or a TypeError / ValueError naming the input and its range."""
    try:
        return check_int(steps, "steps", minimum=0)
    except (TypeError, ValueError) as err:
        raise type(err)(
            f"steps must be an integer: 0 for the file's own K (a set's largest budget) or a K from 1 to the "
            f"file's limit (a set's largest budget, or its grid points - 1 with a cost table), got {steps!r}"
        ) from None


def _check_denoise(denoise: object) -> float:
    """``denoise`` as a float in [0, 1], or a TypeError (not a number) / ValueError naming the input and its
    range (NaN, infinite, outside [0, 1])."""
    refusal = (
        "denoise must be a number in [0, 1] (1: every step; below 1: the last round(K x denoise) steps), "
        f"got {denoise!r}"
    )
    try:
        value = check_float(denoise, "denoise")
    except (TypeError, ValueError) as err:
        raise type(err)(refusal) from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(refusal)
    return value


def schedule_sigmas(path: str | os.PathLike, steps: int = 0, denoise: float = 1.0) -> torch.Tensor:
    """The node's output: float32 sigmas (1 - times), descending, ending in 0, for ``steps`` steps of the
    schedule or set in ``path`` (a plain path, as Python opens it; the node resolves its input first,
    :func:`resolve_schedule_file`).

    ``steps``: 0 for the file's own K (a single schedule's; a set's largest budget), else K by
    ``schedule_for_steps``, the rule ``boss-fast sigmas --steps K`` shares (a set's budgets, and beyond them
    up to its grid points - 1 the DP re-solved on its cost table; a set without one, its budgets only).
    ``denoise`` as ComfyUI's Align Your Steps node: below 1, the last ``round(K x denoise)`` steps of the
    K-step schedule (the low-noise end, for img2img); 0 gives no sigmas.

    The full schedule (``denoise`` 1) starts from ComfyUI's state at ``sigmas[0]``, ``sigmas[0] * noise``: a
    schedule searched with another start rule that starts above t = 0 is refused by name
    (:func:`check_comfyui_start`). Below 1 the sampling starts from ComfyUI's noised input image instead.

    Raises:
        TypeError / ValueError: ``steps`` not an integer >= 0, ``denoise`` not a number in [0, 1] (NaN, a
            string, None), both checked before the file is read.
        ValueError: a file that is neither a schedule nor a set, a K beyond what the file gives, a single
            schedule asked for another K, a schedule that does not end at sigma 0 (t = 1), a full schedule
            whose start rule ComfyUI does not follow.
        OSError: a missing file or a directory.
    """
    steps, denoise = _check_steps(steps), _check_denoise(denoise)
    source_name = os.fspath(path)
    source = read_schedule_file(source_name)
    sched = _budget(source, steps, source_name)
    if sched.times[-1] != 1.0:
        raise ValueError(f"{source_name}: the schedule ends at t = {sched.times[-1]!r}, not at sigma 0")
    sigmas = torch.tensor(sched.sigmas().tolist(), dtype=torch.float32)
    if denoise >= 1.0:
        try:
            check_comfyui_start(sched)
        except ValueError as err:
            raise ValueError(f"{source_name}: {err}") from None
        return sigmas
    if denoise <= 0.0:
        return torch.zeros(0, dtype=torch.float32)
    return sigmas[-(round(sched.steps * denoise) + 1) :].clone()


def _budget(source: Schedule | ScheduleSet, steps: int, where: str) -> Schedule:
    """``steps`` (0: the file's own K) of ``source``, by the rule ``boss-fast sigmas --steps K`` shares."""
    if steps == 0:
        return source if isinstance(source, Schedule) else source[source.max_steps]
    return schedule_for_steps(source, steps, where)


# -- ComfyUI's model folder -------------------------------------------------------------------------------


def _folder_paths() -> ModuleType | None:
    """ComfyUI's ``folder_paths`` when this runs inside ComfyUI (loaded before any custom node), else None."""
    module = sys.modules.get("folder_paths")
    return module if hasattr(module, "add_model_folder_path") else None


def register_schedules_folder(folder_paths: ModuleType) -> None:
    """Make ``<models_dir>/boss_schedules`` a ComfyUI model folder listing ``.json`` files, first in the list;
    folders that ``extra_model_paths.yaml`` gave under ``boss_schedules`` (read before custom nodes) stay."""
    default = os.path.join(folder_paths.models_dir, SCHEDULES_FOLDER)
    folder_paths.add_model_folder_path(SCHEDULES_FOLDER, default, is_default=True)
    folders = folder_paths.folder_names_and_paths[SCHEDULES_FOLDER][0]
    folder_paths.folder_names_and_paths[SCHEDULES_FOLDER] = (folders, {".json"})


def _schedule_folders() -> list[str]:
    folder_paths = _folder_paths()
    if folder_paths is None or SCHEDULES_FOLDER not in folder_paths.folder_names_and_paths:
        return []
    return folder_paths.get_folder_paths(SCHEDULES_FOLDER)


def resolve_schedule_file(name: str) -> str:
    """The file the node reads for its ``schedule_file`` input: an absolute path as given; a relative one (a
    drop-down entry, or a typed name such as ``sd3/k8.json``) in the first ``boss_schedules`` folder that
    holds it, never against the server's working directory.

    Raises:
        ValueError: an empty or non-string name.
        FileNotFoundError: no such file, naming the folders searched.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(
            f"schedule_file must name a schedule JSON in ComfyUI/models/{SCHEDULES_FOLDER} (or an absolute "
            f"path), got {name!r}"
        )
    if os.path.isabs(name):
        if not os.path.isfile(name):
            raise FileNotFoundError(f"schedule_file {name}: no such file")
        return name
    folders = _schedule_folders()
    for folder in folders:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    if not folders:
        raise FileNotFoundError(
            f"schedule_file {name}: a relative name is looked up in ComfyUI's models/{SCHEDULES_FOLDER}, and "
            "this is not running inside ComfyUI: give an absolute path"
        )
    raise FileNotFoundError(
        f"schedule_file {name}: a relative name is looked up in the {SCHEDULES_FOLDER} folder(s) "
        f"{', '.join(folders)}, and it is not there (give an absolute path for a file elsewhere)"
    )


@functools.lru_cache(maxsize=256)
def _file_limit(path: str, mtime_ns: int, size: int) -> int:
    """The largest K the file gives (``max_budget``); cached per version of the file (mtime, size)."""
    return max_budget(read_schedule_file(path))


def _limit(path: str) -> int:
    stat = os.stat(path)
    return _file_limit(path, stat.st_mtime_ns, stat.st_size)


def _listed_files() -> list[str]:
    folder_paths = _folder_paths()
    if folder_paths is None or SCHEDULES_FOLDER not in folder_paths.folder_names_and_paths:
        return []
    return folder_paths.get_filename_list(SCHEDULES_FOLDER)


def _steps_maximum(names: list[str]) -> int:
    """The largest K any listed file gives (0 when none can be read): the steps widget's true maximum."""
    limits = [0]
    for name in names:
        try:
            limits.append(_limit(resolve_schedule_file(name)))
        except (OSError, ValueError):  # refused by name when chosen (VALIDATE_INPUTS)
            continue
    return max(limits)


class BossSchedule:
    """ComfyUI node "BOSS schedule": a boss_fast schedule or set file, ``steps`` and ``denoise`` -> SIGMAS
    (:func:`schedule_sigmas` on :func:`resolve_schedule_file`).

    Example:
        >>> BossSchedule.RETURN_TYPES, BossSchedule.FUNCTION
        (('SIGMAS',), 'get_sigmas')
    """

    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "get_sigmas"
    CATEGORY = "sampling/custom_sampling/schedulers"
    DESCRIPTION = (
        "Bellman-optimal steps (boss_fast): sigmas = 1 - times from a schedule or schedule-set file in "
        f"models/{SCHEDULES_FOLDER}."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802  (the name ComfyUI calls)
        names = _listed_files()
        return {
            "required": {
                "schedule_file": (names, {"tooltip": (
                    f"A schedule or schedule-set JSON (boss-fast schedule --out) in ComfyUI/models/"
                    f"{SCHEDULES_FOLDER}. In an API prompt also an absolute path, or a path relative to "
                    "that folder."
                )}),
                "steps": ("INT", {"default": 0, "min": 0, "max": _steps_maximum(names), "tooltip": (
                    "0: the file's own K (a schedule set: its largest budget). K: a set's K-step schedule, "
                    "as boss-fast sigmas --steps K gives it; beyond the set's budgets, up to its grid points "
                    "- 1, re-solved on its cost table (a set without one: its budgets only). The maximum "
                    "shown is the largest any listed file allows; each file's own limit is checked."
                )}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": (
                    "1: every step. Below 1: the last round(K x denoise) steps (img2img), as Align Your "
                    "Steps."
                )}),
            }
        }  # fmt: skip

    @classmethod
    def VALIDATE_INPUTS(cls, schedule_file: str, steps: int) -> bool | str:  # noqa: N802
        """Before any node runs: the file resolves and reads, and ``steps`` is within what it gives. Taking
        these inputs replaces ComfyUI's own list and min/max checks for them, which know no file's limit (a
        linked input arrives as None and is checked when the node runs)."""
        try:
            path = None if schedule_file is None else resolve_schedule_file(schedule_file)
            if steps is not None:
                steps = _check_steps(steps)
            if path is not None and steps is not None and steps > (top := _limit(path)):
                return f"steps {steps}: {schedule_file} gives K = 0..{top} (0: its own K)"
        except (OSError, TypeError, ValueError) as err:
            return str(err)
        return True

    @classmethod
    def IS_CHANGED(cls, schedule_file: str, steps: int, denoise: float) -> str:  # noqa: N802
        """The file's SHA-256, so an edited file re-runs the node (ComfyUI caches on the inputs)."""
        try:
            with open(resolve_schedule_file(schedule_file), "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        except (OSError, ValueError):
            return ""

    def get_sigmas(self, schedule_file: str, steps: int, denoise: float) -> tuple[torch.Tensor]:
        steps, denoise = _check_steps(steps), _check_denoise(denoise)  # before the file is looked up
        return (schedule_sigmas(resolve_schedule_file(schedule_file), steps, denoise),)


NODE_CLASS_MAPPINGS = {"BossSchedule": BossSchedule}
NODE_DISPLAY_NAME_MAPPINGS = {"BossSchedule": "BOSS schedule"}

if _folder_paths() is not None:  # loaded by ComfyUI as a custom node (or beside its folder_paths)
    register_schedules_folder(_folder_paths())
