"""A straightened LoRA as diffusers (and ComfyUI) load it: ``pipe.load_lora_weights(DIR)`` and
``BossScheduler.from_pretrained(DIR, subfolder="scheduler")``.

``straighten(DiffusersVelocity(pipe.transformer, ...), sched, settings=StraightenSettings(lora_rank=r,
merge=False))`` returns a peft model whose adapter keys read
``base_model.model.model.transformer.<module>.lora_A.weight``: diffusers' ``load_lora_weights`` finds no
module under those names (``NoMatchingPeftModuleError``). Written here through the pipeline class's own
``save_lora_weights`` with the wrapper prefix removed, the keys are
``transformer.<module>.lora_{A,B}.weight``, diffusers' format for SD3, Flux and the other transformer
pipelines, with the adapter's config as ``transformer`` metadata.
"""

from __future__ import annotations

import errno
import inspect
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from boss_fast.integrations.diffusers import BossScheduler, DiffusersVelocity
from boss_fast.integrations.pipelines import pipeline_target
from boss_fast.integrations.sigmas import check_diffusers_start
from boss_fast.schedule import Schedule
from boss_fast.straighten import StraightenSettings, StraightenStats, straighten

try:
    from peft import get_peft_model_state_dict
except ImportError as err:  # the optional extra
    raise ImportError(
        "boss_fast.integrations.diffusers_lora needs the 'peft' package: pip install 'boss_fast[lora]' (with "
        "your torch pin, e.g. torch==2.13.0)"
    ) from err

__all__ = ["LORA_WEIGHT_NAME", "save_diffusers_lora", "straighten_pipeline", "transformer_lora_layers"]

LORA_WEIGHT_NAME = (
    "pytorch_lora_weights.safetensors"  # diffusers' default name: load_lora_weights(DIR) finds it
)


def _velocity_of(student: nn.Module) -> DiffusersVelocity:
    """The one ``DiffusersVelocity`` inside the LoRA student."""
    found = [m for m in student.modules() if isinstance(m, DiffusersVelocity)]
    if len(found) != 1:
        raise TypeError(
            "student must be a straightened DiffusersVelocity with LoRA adapters (straighten("
            "DiffusersVelocity(...), ..., settings=StraightenSettings(lora_rank=r, merge=False))); found "
            f"{len(found)} DiffusersVelocity modules in it"
        )
    return found[0]


def transformer_lora_layers(student: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The adapters of ``student`` (peft, unmerged) as diffusers' ``transformer_lora_layers``: keys relative
    to the transformer (``transformer_blocks.0.attn.to_q.lora_A.weight``), and the adapter metadata (peft's
    ``LoraConfig`` as a dict, its targets an exact regex of the adapted modules).

    The scale ``lora_alpha / r`` is folded into ``lora_B`` and the metadata says ``lora_alpha = r``: loaders
    that ignore the metadata (ComfyUI applies a scale of 1 without an ``.alpha`` key) then compute the same.
    """
    config = getattr(student, "peft_config", {}).get("default")
    if config is None:
        raise TypeError(
            "student has no LoRA adapters (peft): straighten with lora_rank=r and merge=False, then save"
        )
    if config.rank_pattern or config.alpha_pattern or config.use_rslora or config.use_dora:
        raise ValueError(
            "only plain LoRA with one rank and alpha can be written (no rank/alpha patterns, rsLoRA, DoRA)"
        )
    transformer = _velocity_of(student).transformer
    prefix = next(name for name, module in student.named_modules() if module is transformer) + "."
    scale = float(config.lora_alpha) / float(config.r)
    layers: dict[str, torch.Tensor] = {}
    for key, value in get_peft_model_state_dict(student).items():
        if not key.startswith(prefix):
            raise ValueError(
                f"adapter {key!r} is outside the transformer ({prefix[:-1]}): diffusers cannot load it"
            )
        value = value.detach().to("cpu", copy=True).contiguous()
        layers[key[len(prefix) :]] = value * scale if ".lora_B." in key and scale != 1.0 else value
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in layers})
    metadata = config.to_dict()
    metadata.update(
        target_modules="(" + "|".join(re.escape(m) for m in modules) + ")",  # exact names, no suffix matches
        lora_alpha=float(config.r),
        peft_type=str(getattr(config.peft_type, "value", config.peft_type)),
        task_type=None,
        base_model_name_or_path=None,
    )
    return layers, metadata


def save_diffusers_lora(
    student: nn.Module,
    pipeline: Any,
    out_dir: str | os.PathLike,
    sched: Schedule,
) -> str:
    """Write a straightened LoRA and its schedule where diffusers looks for them.

    ``out_dir/pytorch_lora_weights.safetensors`` by the pipeline class's ``save_lora_weights``
    (``transformer_lora_layers`` and ``transformer_lora_adapter_metadata``, see
    :func:`transformer_lora_layers`), and ``out_dir/scheduler/`` by ``BossScheduler.save_pretrained`` (the
    schedule's times and the stock scheduler's config keys when ``pipeline`` is an instance). The whole folder
    is written under a temporary name beside ``out_dir`` and renamed into place (an existing ``out_dir``, a
    folder this function wrote or an empty one, is renamed aside first and then removed), so a reader that
    opens ``out_dir`` sees one writer's LoRA and scheduler together, or no folder, never a mix of two.

    Then ``pipe.load_lora_weights(out_dir)`` and ``pipe.scheduler = BossScheduler.from_pretrained(out_dir,
    subfolder="scheduler")`` sample as the student does (``pipe(..., num_inference_steps=sched.steps)``).

    Args:
        student: ``straighten(DiffusersVelocity(...), sched, settings=StraightenSettings(lora_rank=r,
            merge=False))``'s result.
        pipeline: the pipeline (or its class), e.g. ``StableDiffusion3Pipeline`` or ``FluxPipeline``, whose
            ``save_lora_weights`` takes ``transformer_lora_layers``.
        out_dir: the folder (created if missing; replaced whole if it holds only what this function writes;
            refused, ValueError, if it holds anything else).
        sched: the schedule the student was straightened for.

    Returns:
        The path of the LoRA file.
    """
    if not isinstance(sched, Schedule):
        raise TypeError(f"sched must be a boss_fast.Schedule, got {type(sched).__name__}")
    cls = pipeline if isinstance(pipeline, type) else type(pipeline)
    save = getattr(cls, "save_lora_weights", None)
    if save is None or "transformer_lora_layers" not in inspect.signature(save).parameters:
        raise TypeError(
            f"pipeline {cls.__name__} has no save_lora_weights(transformer_lora_layers=...): pass a "
            "transformer pipeline (StableDiffusion3Pipeline, FluxPipeline, ...) or its class"
        )
    layers, metadata = transformer_lora_layers(student)
    config = (
        None if isinstance(pipeline, type) else getattr(getattr(pipeline, "scheduler", None), "config", None)
    )
    scheduler = BossScheduler.from_schedule(sched, config)
    out_dir = os.fspath(out_dir)
    target = _check_lora_dir(out_dir)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=parent)
    try:
        save(tmp, transformer_lora_layers=layers, transformer_lora_adapter_metadata=metadata,
             weight_name=LORA_WEIGHT_NAME)  # fmt: skip
        scheduler.save_pretrained(os.path.join(tmp, "scheduler"))
        _fsync_tree(tmp)
        _swap_in(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return os.path.join(out_dir, LORA_WEIGHT_NAME)


_TEMP_PREFIX = ".boss-lora-"
_OURS = frozenset({LORA_WEIGHT_NAME, "scheduler"})  # what save_diffusers_lora writes in its folder


def _check_lora_dir(out_dir: str | os.PathLike) -> str:
    """``out_dir``'s real path, refused (ValueError) when it is a file, or a folder holding anything beside
    what :func:`save_diffusers_lora` writes there (which replaces the folder whole)."""
    target = os.path.realpath(os.fspath(out_dir))
    try:  # one stat, one observation: a racing writer moves folders in and out, never a file
        is_file = not stat.S_ISDIR(os.stat(target).st_mode)
    except FileNotFoundError:
        is_file = False
    if is_file:
        raise ValueError(f"out_dir {out_dir}: is a file, not a folder")
    try:
        other = sorted(set(os.listdir(target)) - _OURS)
    except (FileNotFoundError, NotADirectoryError):  # none yet, or a racing writer moved it aside just now
        other = []
    if other:
        raise ValueError(
            f"out_dir {out_dir} holds {other[:3]}{' ...' if len(other) > 3 else ''} beside a LoRA folder's "
            f"files ({', '.join(sorted(_OURS))}): the folder is replaced whole, so pass a new or empty "
            "folder, or one this command wrote"
        )
    return target


def _fsync_tree(root: str) -> None:
    """Flush every file under ``root`` to disk before it is renamed into place (a crash then leaves the old
    folder or the whole new one, not a renamed folder of empty files)."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())


def _swap_in(new: str, target: str, attempts: int = 100) -> None:
    """Rename the folder ``new`` to ``target``. An existing ``target`` is renamed aside, then ``new`` in, then
    the old one removed: a reader sees the old folder, none, or the new one, never parts of two. Another
    writer racing for ``target`` makes a rename fail (ENOTEMPTY / ENOENT): retried, last writer wins."""
    for _ in range(attempts):
        try:
            os.rename(new, target)  # POSIX: onto a missing or an empty folder
            return
        except OSError as err:  # a full target (ENOTEMPTY / EEXIST), which a racing writer may move away
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):  # before we look: retry, never isdir()
                raise
        aside = f"{new}.old"
        try:
            os.rename(target, aside)
        except FileNotFoundError:  # another writer moved it aside first: try again
            continue
        try:
            os.rename(new, target)
            return
        except OSError:  # another writer put its folder in between: it wins this round, try again
            continue
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    raise OSError(f"could not move the LoRA folder into {target}: other writers kept replacing it")


def straighten_pipeline(
    pipe: Any,
    sched: Schedule,
    conditioning: Mapping[str, torch.Tensor],
    out_dir: str | os.PathLike,
    settings: StraightenSettings,
    *,
    guidance: float | None = None,
    height: int | None = None,
    width: int | None = None,
    **run: Any,
) -> StraightenStats:
    """Straighten an SD3 or Flux pipeline's transformer for ``sched`` with LoRA (``settings.lora_rank``) and
    write ``out_dir`` for ``pipe.load_lora_weights(out_dir)`` and ``BossScheduler.from_pretrained(out_dir,
    subfolder="scheduler")`` (:func:`save_diffusers_lora`): ``boss-fast straighten --pipeline``.

    The velocity is the one the pipeline's sampler steps (:func:`boss_fast.integrations.pipelines.
    pipeline_target`: the prompt bank ``conditioning``, CFG or Flux's guidance embedding at ``guidance``, the
    latent shape at ``height`` x ``width``); noise m trains with prompt m mod P. The adapters are trained on
    ``pipe.transformer`` itself (``settings.memory.in_place`` and ``merge=False`` are forced: no copy of the
    weights, the adapters kept apart) and removed from it afterwards (peft ``unload``), so ``pipe`` is the
    base pipeline again when this returns.

    Args:
        pipe: a ``StableDiffusion3Pipeline`` or ``FluxPipeline`` (e.g. ``pipelines.load_pipeline``).
        sched: the schedule, searched at this latent shape (a schedule that records another shape is refused)
            with a start rule a pipeline follows ("scaled" above t = 0 is refused before any training).
        conditioning: ``pipelines.encode_prompts`` or ``pipelines.read_embeddings``'s dict.
        settings: :class:`boss_fast.StraightenSettings` with ``lora_rank`` set (gradient checkpointing and
            autocast in its ``memory``).
        run: :func:`boss_fast.straighten`'s run keywords (``device``, ``progress``, ``checkpoint_dir``,
            ``cache_dir``, ``callback``, ``noise``).

    Returns:
        The run's ``StraightenStats``.
    """
    if not isinstance(settings, StraightenSettings) or settings.lora_rank is None:
        raise ValueError(
            "straighten_pipeline trains LoRA adapters: pass settings=StraightenSettings(lora_rank=r, ...), "
            f"got {settings!r}"
        )
    for name in ("shape", "return_stats", "teacher"):
        if name in run:
            raise TypeError(f"straighten_pipeline sets {name!r} itself")
    check_diffusers_start(sched)  # the folder's BossScheduler could not step it: refused before training
    _check_lora_dir(out_dir)  # before the training, not after it
    target = pipeline_target(pipe, conditioning, guidance, height, width)
    if sched.shape is not None and tuple(sched.shape) != tuple(target.shape):
        raise ValueError(
            f"the schedule was searched on latents of shape {tuple(sched.shape)} but this resolution gives "
            f"{target.shape}: pass the search's height and width"
        )
    settings = replace(settings, merge=False, memory=replace(settings.memory, in_place=True))
    student, stats = straighten(target.velocity, sched, settings=settings, shape=target.shape, **run,
                                return_stats=True)  # fmt: skip
    try:
        save_diffusers_lora(student, pipe, out_dir, sched)
    finally:
        student.unload()  # the pipeline's own transformer modules back, without the adapters
    return stats
