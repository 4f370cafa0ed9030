"""diffusers interop: a scheduler that steps exactly at a schedule, and a transformer as ``velocity(x, t)``.

Conventions (diffusers' ``FlowMatchEulerDiscreteScheduler``): sigma = 1 - t, timestep = sigma * 1000, the
model predicts ``noise - x0``, minus our velocity, and a step is ``x + (sigma_next - sigma) * output``.

- :class:`BossScheduler`: ``pipe.scheduler = BossScheduler.from_schedule(sched, pipe.scheduler.config)``.
  It steps at ``1 - sched.times`` whatever shift, ``mu`` or default sigmas the pipeline passes (Flux always
  passes its own linspace; SD3 passes ``mu`` under dynamic shifting): only the number of steps must agree.
  ``step`` reads host floats, so it never synchronises with the device.
- :class:`DiffusersVelocity`: a diffusers transformer (SD3, Flux, ...) with its conditioning, called as
  ``velocity(x, t)``, for ``bf.optimal_schedule``, ``bf.straighten``, ``bf.sample`` and ``bf.Sampler``.
- :func:`diffusers_sigmas` (from :mod:`boss_fast.integrations.sigmas`): the other way in, sigmas for the
  *stock* scheduler that come out as the schedule after its own shift (``pipe(..., sigmas=...)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from boss_fast._validation import as_times, check_float
from boss_fast.integrations._imports import missing
from boss_fast.integrations.sigmas import diffusers_sigmas
from boss_fast.schedule import Schedule

try:
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
    from diffusers.utils import BaseOutput
except ImportError as err:  # the optional extra
    raise missing("diffusers", "diffusers") from err

__all__ = ["BossScheduler", "BossSchedulerOutput", "DiffusersVelocity", "diffusers_sigmas"]

# The stock scheduler's config keys that pipelines read (calculate_shift's inputs, the shift itself).
_CARRIED = (
    "num_train_timesteps",
    "shift",
    "use_dynamic_shifting",
    "base_shift",
    "max_shift",
    "base_image_seq_len",
    "max_image_seq_len",
    "time_shift_type",
)


@dataclass
class BossSchedulerOutput(BaseOutput):
    """``step``'s output, as diffusers' flow-match scheduler returns it."""

    prev_sample: torch.Tensor


class BossScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that takes Euler steps exactly at a boss_fast schedule's sigmas (1 - times).

    The shift, dynamic shift (``mu``) and any ``sigmas``/``timesteps`` a pipeline passes to
    :meth:`set_timesteps` are accepted and ignored: the steps are the schedule's. The number of steps must be
    the schedule's K (``pipe(..., num_inference_steps=K)``); anything else raises rather than silently
    sampling another schedule. The config keeps the times (``save_pretrained``/``from_pretrained`` round-trip)
    and the stock scheduler's shifting keys, which pipelines read to compute ``mu``.

    ``step`` is ``sample + (sigma_next - sigma) * model_output`` in float32 with the sigmas as host floats
    (no device-to-host sync; the step index is a Python int starting at ``begin_index``, default 0).

    Example:
        >>> sched = Schedule(times=np.array([0.0, 0.5, 1.0]), indices=np.array([0, 1, 2]), cost=0.0,
        ...                  grid=np.array([0.0, 0.5, 1.0]))
        >>> scheduler = BossScheduler.from_schedule(sched)
        >>> scheduler.set_timesteps(2)
        >>> scheduler.timesteps
        tensor([1000.,  500.])
    """

    _compatibles: list[str] = []
    order = 1

    @register_to_config
    def __init__(
        self,
        times: Sequence[float] = (0.0, 1.0),
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        time_shift_type: str = "exponential",
    ) -> None:
        t = as_times(list(times), "times")
        if t[-1] != 1.0:
            raise ValueError(f"a BossScheduler's schedule must end at t = 1 (sigma 0), got t = {t[-1]!r}")
        self._times = t
        # Host floats: what step() reads. sigma = 1 - t, computed in float64 from the exact times.
        self._sigmas_host: list[float] = (1.0 - t).tolist()
        self._timesteps_host: list[float] = [s * num_train_timesteps for s in self._sigmas_host[:-1]]
        self.num_inference_steps = len(t) - 1
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._set_tensors(None)
        self.init_noise_sigma = 1.0
        self._shift = shift

    def _set_tensors(self, device: torch.device | str | None) -> None:
        self.sigmas = torch.tensor(self._sigmas_host, dtype=torch.float32, device=device)
        self.timesteps = torch.tensor(self._timesteps_host, dtype=torch.float32, device=device)
        self.sigma_max = self._sigmas_host[0]
        self.sigma_min = self._sigmas_host[-2]

    @classmethod
    def from_schedule(
        cls, sched: Schedule | Sequence[float] | np.ndarray, config: Mapping[str, Any] | None = None
    ) -> BossScheduler:
        """A scheduler for ``sched`` (a Schedule or its times), carrying the shifting keys of ``config``
        (e.g. ``pipe.scheduler.config``) so the pipeline's own ``mu`` computation still works."""
        times = sched.times if isinstance(sched, Schedule) else as_times(sched, "times")
        carried = {k: config[k] for k in _CARRIED if config is not None and k in config}
        return cls(times=[float(t) for t in times], **carried)

    # -- what the pipelines call ------------------------------------------------------------------------

    @property
    def shift(self) -> float:
        """The configured shift (kept for pipelines that read it; it does not move the steps)."""
        return self._shift

    def set_shift(self, shift: float) -> None:
        """Record ``shift`` (as the stock scheduler does); the steps stay the schedule's."""
        self._shift = shift

    @property
    def step_index(self) -> int | None:
        """The index of the next step (None before the first)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The first step's index, set by ``set_begin_index`` (img2img pipelines start later)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at step ``begin_index`` (0 <= begin_index < K)."""
        if not 0 <= begin_index < self.num_inference_steps:
            raise ValueError(f"begin_index must be in [0, {self.num_inference_steps}), got {begin_index}")
        self._begin_index = int(begin_index)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: Sequence[float] | np.ndarray | torch.Tensor | None = None,
        mu: float | None = None,
        timesteps: Sequence[float] | np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Put ``timesteps`` (K,) and ``sigmas`` (K + 1,) on ``device`` and reset the step index.

        ``mu`` and the values of ``sigmas``/``timesteps`` are ignored by design (module docstring); their
        length, like ``num_inference_steps``, must be K.
        """
        k = len(self._times) - 1
        for name, value in (("num_inference_steps", num_inference_steps), ("sigmas", sigmas),
                            ("timesteps", timesteps)):  # fmt: skip
            if value is None:
                continue
            n = value if name == "num_inference_steps" else len(value)
            if n != k:
                raise ValueError(
                    f"this BossScheduler steps at its schedule's {k} steps; got {name} for {n} steps "
                    f"(call the pipeline with num_inference_steps={k})"
                )
        self.num_inference_steps = k
        self._set_tensors(device)
        self._step_index = None
        self._begin_index = None

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """The identity (flow matching does not scale the model input)."""
        return sample

    def _index(self, timestep: float | torch.Tensor | None) -> int:
        if self._step_index is not None:
            return self._step_index
        if self._begin_index is not None:
            return self._begin_index
        if timestep is None:
            return 0
        # Training-style use without a begin index: find the timestep (one host read, not in the loop).
        value = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        hosts = self._timesteps_host
        matches = [i for i, ts in enumerate(hosts) if abs(ts - value) <= 1e-3 * max(1.0, ts)]
        if not matches:
            raise ValueError(f"timestep {value} is not one of this schedule's timesteps {hosts}")
        return matches[0]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        *args: Any,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> BossSchedulerOutput | tuple[torch.Tensor]:
        """One Euler step from sigma_i to sigma_(i+1): ``sample + (sigma_(i+1) - sigma_i) * model_output``.

        Computed in float32 and returned in ``model_output``'s dtype, as the stock scheduler does. The step
        index starts at ``begin_index`` (0 when unset: no lookup of ``timestep``, so no device sync). Extra
        positional and keyword arguments of the stock scheduler (``s_churn``, ``generator``, ...) are
        accepted and ignored (the sampler is deterministic).
        """
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else 0
        i = self._step_index
        if i >= len(self._sigmas_host) - 1:
            raise ValueError(
                f"step {i + 1} of a {len(self._sigmas_host) - 1}-step schedule: call set_timesteps to restart"
            )
        dt = self._sigmas_host[i + 1] - self._sigmas_host[i]  # = t_i - t_(i+1), a host float
        prev = torch.add(sample.to(torch.float32), model_output.to(torch.float32), alpha=dt)
        self._step_index = i + 1
        prev = prev.to(model_output.dtype)
        return BossSchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def scale_noise(
        self, sample: torch.Tensor, timestep: float | torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The forward process at the current (or begin) step's sigma, ``sigma * noise + (1 - sigma) *
        sample`` (img2img). Without a step or begin index the timestep is looked up once."""
        if noise is None:
            raise ValueError("scale_noise needs the noise tensor")
        sigma = self._sigmas_host[self._index(timestep)]
        return sigma * noise + (1.0 - sigma) * sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps


class DiffusersVelocity(nn.Module):
    """A diffusers transformer as ``velocity(x, t)``: timestep = (1 - t) * ``timestep_scale``, velocity =
    minus the model output, conditioning passed through.

    Args:
        transformer: e.g. ``SD3Transformer2DModel`` or ``FluxTransformer2DModel``: called as
            ``transformer(hidden_states=x, timestep=..., return_dict=False, **conditioning)[0]``.
        timestep_scale: 1000 for SD3 (``scheduler.timesteps``); Flux's pipeline divides by 1000 before the
            transformer, so 1.0 there.
        **conditioning: keyword tensors for the transformer (``encoder_hidden_states``,
            ``pooled_projections``, Flux's ``guidance``/``img_ids``/``txt_ids``, ...). A tensor with batch 1
            is broadcast to the batch of x (so schedule search and straightening, which draw batches of any
            size, work with one prompt); a tensor with batch B is used as is for batches of exactly B. Tensors
            are
            registered as non-persistent buffers, so ``.to(device)`` and ``copy.deepcopy`` carry them.
            Non-tensor values (e.g. ``joint_attention_kwargs``) are passed unchanged.
        fixed: keyword arguments passed unchanged whatever the batch, e.g. Flux's ``txt_ids`` (T, 3) and
            ``img_ids`` (N, 3), which have no batch dimension (tensors are buffers too).

    The transformer's parameters are this module's (``transformer.*``), so ``bf.straighten`` fine-tunes them
    (LoRA through peft targets its Linear layers).
    """

    def __init__(
        self,
        transformer: nn.Module,
        timestep_scale: float = 1000.0,
        *,
        fixed: Mapping[str, Any] | None = None,
        **conditioning: Any,
    ) -> None:
        super().__init__()
        if not isinstance(transformer, nn.Module):
            raise TypeError(f"transformer must be a torch.nn.Module, got {type(transformer).__name__}")
        self.transformer = transformer
        self.timestep_scale = check_float(timestep_scale, "timestep_scale")
        self._tensor_keys: list[str] = []
        self._other: dict[str, Any] = {}
        self._fixed_keys: list[str] = []
        for key, value in (fixed or {}).items():
            if key in conditioning:
                raise ValueError(f"{key!r} is given both as conditioning and in fixed")
            if isinstance(value, torch.Tensor):
                self.register_buffer(f"fixed_{key}", value, persistent=False)
                self._fixed_keys.append(key)
            else:
                self._other[key] = value
        for key, value in conditioning.items():
            if isinstance(value, torch.Tensor):
                if value.ndim == 0:
                    raise ValueError(f"conditioning {key!r} must have a batch dimension, got a 0-d tensor")
                self.register_buffer(f"cond_{key}", value, persistent=False)
                self._tensor_keys.append(key)
            else:
                self._other[key] = value

    def conditioning(self, batch: int) -> dict[str, Any]:
        """The keyword arguments for a batch of ``batch`` states (batch-1 tensors expanded)."""
        out = dict(self._other)
        out.update({key: getattr(self, f"fixed_{key}") for key in self._fixed_keys})
        for key in self._tensor_keys:
            value = getattr(self, f"cond_{key}")
            if value.shape[0] == 1 and batch != 1:
                value = value.expand(batch, *value.shape[1:])
            elif value.shape[0] != batch:
                raise ValueError(
                    f"conditioning {key!r} has batch {value.shape[0]} but x has batch {batch}: give batch-1 "
                    "conditioning (broadcast to any batch) or call with batches of that size"
                )
            out[key] = value
        return out

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        timestep = (1.0 - t) * self.timestep_scale
        cond = self.conditioning(len(x))
        out = self.transformer(hidden_states=x, timestep=timestep, return_dict=False, **cond)
        out = out[0] if isinstance(out, tuple | list) else out
        return (-out).to(x.dtype)
