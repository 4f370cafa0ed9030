"""A diffusers pipeline as a schedule-search target: load it, encode a bank of prompts, the latent shape and
Flux's ``mu`` at a resolution, and the velocity the pipeline's sampler steps (``boss-fast schedule
--pipeline``; the straightening of a pipeline builds on the same pieces).

Supported: ``StableDiffusion3Pipeline`` (CFG as it runs it: ``guidance_scale > 1`` doubles the batch with the
negative prompt's embeddings) and ``FluxPipeline`` (distilled guidance: the scale goes into the transformer's
guidance embedding). The conditioning is a dict under the pipelines' own call-argument names
(``prompt_embeds``, ``pooled_prompt_embeds``, ``negative_prompt_embeds``, ``negative_pooled_prompt_embeds``),
P prompts a batch: the bank of :class:`~boss_fast.integrations.diffusers.DiffusersVelocity` (noise m is paired
with prompt m mod P).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from boss_fast._validation import check_float, check_int
from boss_fast.integrations._imports import missing
from boss_fast.integrations.diffusers import DiffusersVelocity
from boss_fast.schedule import ScheduleSet
from boss_fast.search import SearchSettings, optimal_schedules

try:
    from diffusers import DiffusionPipeline, FluxPipeline, StableDiffusion3Pipeline
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    from safetensors import SafetensorError  # a dependency of diffusers
    from safetensors.torch import load_file
except ImportError as err:  # the optional extra
    raise missing("diffusers", "diffusers") from err

__all__ = [
    "EMBEDDING_KEYS",
    "GUIDANCE_RANGE",
    "PipelineTarget",
    "check_guidance",
    "encode_prompts",
    "latent_shape",
    "load_pipeline",
    "pipeline_kind",
    "pipeline_mu",
    "pipeline_schedules",
    "pipeline_target",
    "read_embeddings",
    "read_prompts",
]

# The keys of a prompt-embeddings file and of the conditioning dicts here: the pipelines' own argument names.
EMBEDDING_KEYS = (
    "prompt_embeds",
    "pooled_prompt_embeds",
    "negative_prompt_embeds",
    "negative_pooled_prompt_embeds",
)
# The guidance scale each pipeline's __call__ defaults to (diffusers 0.42): SD3 7.0, Flux 3.5.
DEFAULT_GUIDANCE = {"sd3": 7.0, "flux": 3.5}
# The guidance scales taken: SD3 runs CFG above 1, and 1000 is 140x its default (a guided velocity 1000x the
# conditional difference stays finite even in float16, max 65504). 1e308 overflowed Flux's float32 guidance
# embedding (RuntimeError) and made SD3's velocities non-finite mid-search.
GUIDANCE_RANGE = (0.0, 1000.0)
# calculate_shift's defaults where a scheduler config lacks a key (each pipeline's own get(..., default)).
_SHIFT_DEFAULTS = {
    "sd3": {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.16},
    "flux": {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15},
}


@dataclass(frozen=True)
class PipelineTarget:
    """What a schedule search on a pipeline needs.

    Attributes:
        velocity: the transformer with the prompt bank, as the pipeline's sampler steps it.
        shape: one latent's shape at the resolution: SD3 (C, H / 8, W / 8); Flux packed (tokens, 4 C).
        mu: the dynamic shift the pipeline passes at that resolution (Flux always; SD3 under
            ``use_dynamic_shifting``), else None.
        kind: "sd3" or "flux".
        guidance: the guidance scale the velocity runs at (None: no guidance).
    """

    velocity: DiffusersVelocity
    shape: tuple[int, ...]
    mu: float | None
    kind: str
    guidance: float | None


def load_pipeline(
    path_or_id: str | os.PathLike, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> DiffusionPipeline:
    """A pipeline folder or hub id through diffusers' own ``DiffusionPipeline.from_pretrained`` (the class in
    its ``model_index.json``), in ``dtype``, moved to ``device``.

    Raises:
        ValueError: the pipeline is neither SD3 nor Flux (:func:`pipeline_kind`); a local folder whose
            ``model_index.json`` is not a JSON object naming the pipeline's class (``_class_name``).
    """
    _check_model_index(os.fspath(path_or_id))
    pipe = DiffusionPipeline.from_pretrained(os.fspath(path_or_id), torch_dtype=dtype)
    pipeline_kind(pipe)
    if device is not None:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _check_model_index(path: str) -> None:
    """A local pipeline folder's ``model_index.json`` names its class (diffusers reads ``_class_name`` with a
    bare subscript: ``{}`` raised KeyError '_class_name'). Hub ids and folders without the file are left to
    diffusers, whose errors name them."""
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        return
    try:
        with open(index, encoding="utf-8") as f:
            config = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{index}: not a JSON file ({err}); a pipeline folder's model_index.json") from None
    name = config.get("_class_name") if isinstance(config, dict) else None
    if not isinstance(name, str):
        raise ValueError(
            f"{index}: no _class_name (the pipeline's class: StableDiffusion3Pipeline or FluxPipeline); not "
            "a diffusers pipeline folder as pipe.save_pretrained writes it"
        )


def pipeline_kind(pipe: object) -> str:
    """The pipeline's kind: "sd3" for a ``StableDiffusion3Pipeline``, "flux" for a ``FluxPipeline``.

    Raises:
        ValueError: any other pipeline, named.
    """
    if isinstance(pipe, StableDiffusion3Pipeline):
        return "sd3"
    if isinstance(pipe, FluxPipeline):
        return "flux"
    raise ValueError(
        f"{type(pipe).__name__} is not supported: boss_fast searches StableDiffusion3Pipeline and "
        "FluxPipeline (build a DiffusersVelocity yourself for another transformer)"
    )


def _resolution(pipe: DiffusionPipeline, height: int | None, width: int | None) -> tuple[int, int]:
    """(height, width) in pixels: multiples of the VAE's factor f times the latent patch (SD3: the
    transformer's patch_size, 2 in SD3; Flux: its 2 x 2 packing), as the pipelines' own check_inputs ask.
    Smaller sizes gave a latent narrower than one patch (--height 8: a convolution error mid-search)."""
    side = pipe.default_sample_size * pipe.vae_scale_factor
    h = side if height is None else check_int(height, "height")
    w = side if width is None else check_int(width, "width")
    f = pipe.vae_scale_factor
    if pipeline_kind(pipe) == "flux":
        patch, why = 2, f"the VAE's factor {f} x Flux's 2 x 2 latent packing"
    else:
        patch = int(pipe.transformer.config.patch_size)
        why = f"the VAE's factor {f} x the transformer's patch size {patch}"
    for name, value in (("height", h), ("width", w)):
        if value < f * patch or value % (f * patch):
            raise ValueError(
                f"{name} must be a positive multiple of {f * patch} for this pipeline ({why}), got {value}"
            )
    return h, w


def latent_shape(
    pipe: DiffusionPipeline, height: int | None = None, width: int | None = None
) -> tuple[int, ...]:
    """One latent's shape at ``height`` x ``width`` pixels (default: the pipeline's default size), as the
    pipeline's ``prepare_latents`` makes it: SD3 (C, H / f, W / f); Flux packed into 2 x 2 patches,
    (H / 2f x W / 2f tokens, 4 C), with f the VAE scale factor."""
    h, w = _resolution(pipe, height, width)
    f = pipe.vae_scale_factor
    if pipeline_kind(pipe) == "flux":
        channels = pipe.transformer.config.in_channels // 4
        return ((h // (2 * f)) * (w // (2 * f)), 4 * channels)
    return (pipe.transformer.config.in_channels, h // f, w // f)


def pipeline_mu(pipe: DiffusionPipeline, shape: Sequence[int]) -> float | None:
    """The ``mu`` the pipeline passes to its scheduler for latents of ``shape`` (``calculate_shift`` of the
    image sequence length and the scheduler config): Flux always, SD3 under ``use_dynamic_shifting``; else
    None."""
    kind = pipeline_kind(pipe)
    config = pipe.scheduler.config
    if kind == "flux":
        seq_len = shape[0]
    elif config.get("use_dynamic_shifting", False):
        patch = pipe.transformer.config.patch_size
        seq_len = (shape[1] // patch) * (shape[2] // patch)
    else:
        return None
    args = {key: config.get(key, default) for key, default in _SHIFT_DEFAULTS[kind].items()}
    return float(calculate_shift(seq_len, *args.values()))


def read_prompts(path: str | os.PathLike) -> list[str]:
    """The prompts in a text file, one a line (blank lines skipped).

    Raises:
        ValueError: the file holds no prompt, or is not UTF-8 text.
    """
    try:
        with open(path, encoding="utf-8") as f:
            prompts = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{os.fspath(path)}: not UTF-8 text (byte {err.start}: {err.reason}); prompts are a text file, "
            "one prompt a line"
        ) from None
    if not prompts:
        raise ValueError(f"{os.fspath(path)}: no prompt (one prompt a line)")
    return prompts


def read_embeddings(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Prompt embeddings from a safetensors file with the keys of :data:`EMBEDDING_KEYS` (``prompt_embeds``
    (P, T, D) and ``pooled_prompt_embeds`` (P, D') required; the negative pair optional, for CFG).

    Raises:
        ValueError: a file that is not safetensors (or is truncated), a missing required key or an unknown
            one.
    """
    try:
        from_file = load_file(os.fspath(path))
    except SafetensorError as err:  # truncated, or not safetensors at all
        raise ValueError(
            f"{os.fspath(path)}: not a readable safetensors file ({err}); write the embeddings with "
            "safetensors.torch.save_file"
        ) from None
    unknown = sorted(set(from_file) - set(EMBEDDING_KEYS))
    if unknown:
        raise ValueError(f"{os.fspath(path)}: unknown key(s) {unknown}; the keys are {list(EMBEDDING_KEYS)}")
    for key in EMBEDDING_KEYS[:2]:
        if key not in from_file:
            raise ValueError(f"{os.fspath(path)}: missing {key!r} (the keys are {list(EMBEDDING_KEYS)})")
    return from_file


def encode_prompts(
    pipe: DiffusionPipeline,
    prompts: Sequence[str],
    guidance: float | None = None,
    negative_prompt: str = "",
    max_sequence_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """The bank of ``prompts`` through the pipeline's own ``encode_prompt``: a dict under
    :data:`EMBEDDING_KEYS` with P = len(prompts) rows. SD3 adds the negative prompt's embeddings when the
    guidance (default: the pipeline's 7.0) is above 1, as the pipeline's CFG does. ``max_sequence_length``:
    the T5 length, as the pipeline call's (default its own: SD3 256, Flux 512); sample with the same."""
    kind = pipeline_kind(pipe)
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    length = {}
    if max_sequence_length is not None:
        length["max_sequence_length"] = check_int(max_sequence_length, "max_sequence_length")
    with torch.no_grad():
        if kind == "flux":
            embeds, pooled, _ = pipe.encode_prompt(prompts, None, **length)
            return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        cfg = _guidance(kind, guidance) > 1.0
        negatives = [negative_prompt] * len(prompts) if cfg else None
        out = pipe.encode_prompt(
            prompts, None, None, do_classifier_free_guidance=cfg, negative_prompt=negatives, **length
        )
    embeds, negative, pooled, negative_pooled = out  # SD3's encode_prompt order
    found = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
    if cfg:
        found.update(negative_prompt_embeds=negative, negative_pooled_prompt_embeds=negative_pooled)
    return found


def check_guidance(guidance: object, name: str = "guidance") -> float:
    """A pipeline's guidance scale: a finite number in :data:`GUIDANCE_RANGE` ([0, 1000]), else a TypeError
    or ValueError naming ``name`` and the range."""
    w = check_float(guidance, name)
    lo, hi = GUIDANCE_RANGE
    if not lo <= w <= hi:
        raise ValueError(
            f"{name} must be in [{lo:g}, {hi:g}] (SD3 runs classifier-free guidance above 1; the pipelines "
            f"default to SD3 {DEFAULT_GUIDANCE['sd3']:g}, Flux {DEFAULT_GUIDANCE['flux']:g}), got {w:g}"
        )
    return w


def _guidance(kind: str, guidance: float | None) -> float:
    return DEFAULT_GUIDANCE[kind] if guidance is None else check_guidance(guidance)


def pipeline_target(
    pipe: DiffusionPipeline,
    conditioning: Mapping[str, torch.Tensor],
    guidance: float | None = None,
    height: int | None = None,
    width: int | None = None,
) -> PipelineTarget:
    """The velocity the pipeline's sampler steps for the prompt bank ``conditioning`` (from
    :func:`encode_prompts` or :func:`read_embeddings`), with the latent shape and ``mu`` at the resolution.

    SD3: timestep = sigma x 1000; with ``guidance`` (default 7.0) above 1, CFG on a doubled batch with the
    negative embeddings (required then). Flux: timestep = sigma; the guidance (default 3.5) as the guidance
    embedding when the transformer has one (FLUX.1-dev), refused when it has none (schnell) and a guidance
    is given; the batch-free text and image ids as the pipeline makes them.

    Raises:
        ValueError: missing embeddings, embeddings of the wrong width for the transformer, embeddings and
            pooled embeddings of different row counts, guidance outside :data:`GUIDANCE_RANGE` or given to
            a Flux transformer without guidance embedding.
    """
    kind = pipeline_kind(pipe)
    shape = latent_shape(pipe, height, width)
    transformer = pipe.transformer
    param = next(transformer.parameters())
    cond = {k: v.to(param.device, param.dtype) for k, v in conditioning.items()}
    _check_embeddings(transformer.config, cond)
    pos = {"encoder_hidden_states": cond["prompt_embeds"], "pooled_projections": cond["pooled_prompt_embeds"]}
    if kind == "flux":
        if any(key.startswith("negative_") for key in cond):
            raise ValueError(
                "negative embeddings given for Flux: its guidance is the distilled guidance embedding; true "
                "CFG (FluxPipeline's true_cfg_scale) is not supported here, drop the negative_* keys"
            )
        velocity, scale = _flux_velocity(pipe, pos, guidance, _resolution(pipe, height, width))
    else:
        velocity, scale = _sd3_velocity(transformer, pos, cond, _guidance(kind, guidance))
    return PipelineTarget(
        velocity=velocity, shape=shape, mu=pipeline_mu(pipe, shape), kind=kind, guidance=scale
    )


def _check_embeddings(config: Mapping[str, Any], cond: Mapping[str, torch.Tensor]) -> None:
    """(P, T, joint_attention_dim) text and (P, pooled_projection_dim) pooled embeddings, or ValueError."""
    for key in EMBEDDING_KEYS[:2]:
        if key not in cond:
            raise ValueError(f"the conditioning needs {key!r}")
    widths = {"prompt_embeds": (3, config["joint_attention_dim"]),
              "negative_prompt_embeds": (3, config["joint_attention_dim"]),
              "pooled_prompt_embeds": (2, config["pooled_projection_dim"]),
              "negative_pooled_prompt_embeds": (2, config["pooled_projection_dim"])}  # fmt: skip
    for key, value in cond.items():
        if key not in widths:
            raise ValueError(f"unknown conditioning key {key!r}; the keys are {list(EMBEDDING_KEYS)}")
        ndim, width = widths[key]
        if value.ndim != ndim or value.shape[-1] != width:
            raise ValueError(
                f"{key} has shape {tuple(value.shape)}; this transformer takes {ndim}-D embeddings of width "
                f"{width} (P prompts first)"
            )
    _check_rows(cond)


def _check_rows(cond: Mapping[str, torch.Tensor]) -> None:
    """Each prompt's embeddings and pooled embedding come in pairs: as many rows in both (a 1-row pooled
    tensor beside P rows would be broadcast, pairing every prompt with prompt 1's pooled embedding); the
    negatives' count against the prompts' is DiffusersVelocity's check (1 or P)."""
    rows = {key: value.shape[0] for key, value in cond.items()}
    for embeds, pooled in (EMBEDDING_KEYS[:2], EMBEDDING_KEYS[2:]):
        if embeds in rows and pooled in rows and rows[embeds] != rows[pooled]:
            raise ValueError(
                f"{embeds} has {rows[embeds]} row(s) but {pooled} has {rows[pooled]}: give one pooled "
                f"embedding per prompt (the same number of rows P in both)"
            )


def _sd3_velocity(
    transformer: torch.nn.Module, pos: dict, cond: Mapping[str, torch.Tensor], scale: float
) -> tuple[DiffusersVelocity, float]:
    if scale <= 1.0:  # the pipeline runs no CFG at guidance_scale <= 1
        return DiffusersVelocity(transformer, 1000.0, **pos), scale
    if "negative_prompt_embeds" not in cond or "negative_pooled_prompt_embeds" not in cond:
        raise ValueError(
            f"guidance {scale} > 1 runs classifier-free guidance: the conditioning needs "
            "negative_prompt_embeds and negative_pooled_prompt_embeds (or pass guidance 1)"
        )
    negative = {
        "encoder_hidden_states": cond["negative_prompt_embeds"],
        "pooled_projections": cond["negative_pooled_prompt_embeds"],
    }
    return DiffusersVelocity(transformer, 1000.0, negative=negative, guidance_scale=scale, **pos), scale


def _flux_velocity(
    pipe: DiffusionPipeline, pos: dict, guidance: float | None, pixels: tuple[int, int]
) -> tuple[DiffusersVelocity, float | None]:
    transformer = pipe.transformer
    param = next(transformer.parameters())
    scale = None
    if transformer.config.guidance_embeds:
        scale = _guidance("flux", guidance)
        pos = dict(pos, guidance=torch.full((1,), scale, device=param.device, dtype=torch.float32))
    elif guidance is not None:
        raise ValueError(
            "this Flux transformer has no guidance embedding (e.g. schnell): guidance does not apply"
        )
    f2 = 2 * pipe.vae_scale_factor  # one token per 2 x 2 latent pixels
    ids = pipe._prepare_latent_image_ids(1, pixels[0] // f2, pixels[1] // f2, param.device, param.dtype)
    text_ids = torch.zeros(pos["encoder_hidden_states"].shape[1], 3, device=param.device, dtype=param.dtype)
    return DiffusersVelocity(transformer, 1.0, fixed={"txt_ids": text_ids, "img_ids": ids}, **pos), scale


def pipeline_schedules(
    target: PipelineTarget, max_steps: int, settings: SearchSettings | None = None, **handles: Any
) -> ScheduleSet:
    """Every budget K = 1 .. ``max_steps`` for a pipeline: :func:`boss_fast.optimal_schedules` on the target's
    velocity (its prompt bank) and latent shape with ``settings``, each budget recording the target's ``mu``.
    ``handles``: ``optimal_schedules``' keyword arguments (``device``, ``progress``, ``checkpoint``, ...)."""
    sset = optimal_schedules(target.velocity, target.shape, max_steps, settings, **handles)
    return ScheduleSet((replace(s, mu=target.mu) for s in sset.values()), cost_table=sset.cost_table)
