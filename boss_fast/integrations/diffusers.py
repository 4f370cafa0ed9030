"""diffusers interop: a scheduler that steps exactly at a schedule, and a transformer as ``velocity(x, t)``.

Conventions (diffusers' ``FlowMatchEulerDiscreteScheduler``): sigma = 1 - t, timestep = sigma * 1000, the
model predicts ``noise - x0``, minus our velocity, and a step is ``x + (sigma_next - sigma) * output``.

- :class:`BossScheduler`: ``pipe.scheduler = BossScheduler.from_schedule(sched, pipe.scheduler.config)``.
  It steps at ``1 - sched.times`` whatever shift, ``mu`` or default sigmas the pipeline passes (Flux always
  passes its own linspace; SD3 passes ``mu`` under dynamic shifting): only the number of steps must agree.
  Otherwise it keeps the stock scheduler's contract (methods, arguments, output class, errors).
- :class:`DiffusersVelocity`: a diffusers transformer (SD3, Flux, ...) with its conditioning, called as
  ``velocity(x, t)``, for ``bf.optimal_schedules``, ``bf.straighten``, ``bf.sample`` and ``bf.Sampler``.
- :func:`diffusers_sigmas` (from :mod:`boss_fast.integrations.sigmas`): the other way in, sigmas for the
  *stock* scheduler that come out as the schedule after its own shift (``pipe(..., sigmas=...)``).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from boss_fast._validation import (
    START_RULES,
    as_times,
    check_choice,
    check_float,
    check_scale,
    check_shape,
)
from boss_fast.integrations._imports import missing
from boss_fast.integrations.sigmas import (
    FLOW_MATCH_KEYS,
    check_diffusers_start,
    diffusers_sigmas,
    refuse_stepping_keys,
)
from boss_fast.ode import VelocityFn, cfg_combine
from boss_fast.schedule import Schedule

try:
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_flow_match_euler_discrete import (
        FlowMatchEulerDiscreteSchedulerOutput,
    )
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
except ImportError as err:  # the optional extra
    raise missing("diffusers", "diffusers") from err

__all__ = ["BossScheduler", "BossSchedulerOutput", "DiffusersVelocity", "diffusers_sigmas"]

# Every config key of the stock scheduler, carried by from_schedule: pipelines read the shifting keys (to
# compute mu), a swap back to the stock scheduler restores the rest, and __init__ refuses the ones that change
# the step (refuse_stepping_keys): the stock keys sigmas.py knows, less BossScheduler's own ``times``.
_CARRIED = tuple(sorted(FLOW_MATCH_KEYS - {"times"}))
# The schedule's start rule (Schedule.start) in the config: a private key, which diffusers' register_to_config
# stores and save_config writes without passing it to __init__ (whose 17 parameters are the stock keys, the
# times and the searched resolution), and which from_config registers back after construction.
START_KEY = "_start_rule"

# ``step``'s output: the stock flow-match output class itself (pipelines and isinstance checks see no change).
BossSchedulerOutput = FlowMatchEulerDiscreteSchedulerOutput


def _is_integer_timestep(timestep: object) -> bool:
    if isinstance(timestep, torch.Tensor):
        return not (timestep.is_floating_point() or timestep.is_complex())
    return isinstance(timestep, int | np.integer)


class BossScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that takes Euler steps exactly at a boss_fast schedule's sigmas (1 - times).

    The shift, dynamic shift (``mu``) and any ``sigmas``/``timesteps`` a pipeline passes to
    :meth:`set_timesteps` are accepted and ignored: the steps are the schedule's. The number of steps must be
    the schedule's K (``pipe(..., num_inference_steps=K)``); anything else raises rather than silently
    sampling another schedule. The config keeps the times (``save_pretrained``/``from_pretrained`` round-trip)
    and every key of the stock scheduler's config, which pipelines read to compute ``mu``.

    Otherwise it behaves as diffusers' ``FlowMatchEulerDiscreteScheduler`` set to the same sigmas, with the
    same results: ``step`` (first index from ``begin_index``, else looked up from the timestep;
    ``per_token_timesteps``; integer timesteps refused; the stock output class), ``scale_noise`` (one sigma
    per sample), ``add_noise``, ``index_for_timestep``, ``set_begin_index``, ``set_shift``. Refused: a config
    with ``invert_sigmas`` or ``stochastic_sampling`` (they change the step itself), and construction without
    a schedule (``BossScheduler.from_config(pipe.scheduler.config)`` alone: pass ``times=`` or use
    :meth:`from_schedule`).

    ``step`` reads the step's sigmas from the host, so after the first step (or from the first with
    ``set_begin_index(0)``, as Flux does) it never synchronises with the device.

    A schedule is searched at one resolution: :meth:`from_schedule` records its latent shape and ``mu``
    (``Schedule.shape``, ``Schedule.mu``; config keys ``searched_shape``, ``searched_mu``), and a pipeline
    that passes another ``mu`` to ``set_timesteps`` or steps latents of another shape gets one UserWarning
    of each kind, naming both values. The steps stay the schedule's.

    A pipeline starts from its txt2img latents, the unscaled noise, at the first sigma ``1 - times[0]`` (below
    1 for a schedule that starts later): the start rules "noise" and "zero" (:attr:`start`). A "scaled"
    schedule that starts above t = 0 is refused by name (``check_diffusers_start``). :meth:`from_schedule`
    records the rule in the config (the private key ``_start_rule``, kept by ``save_pretrained`` /
    ``from_pretrained``); a config whose rule the pipeline cannot honour is refused when it is loaded.

    Example:
        >>> sched = Schedule(times=np.array([0.0, 0.5, 1.0]), indices=np.array([0, 1, 2]), cost=0.0,
        ...                  grid=np.array([0.0, 0.5, 1.0]))
        >>> scheduler = BossScheduler.from_schedule(sched)
        >>> scheduler.set_timesteps(2)
        >>> scheduler.timesteps
        tensor([1000.,  500.])
    """

    # Flow-match schedulers for the same velocity models and the same config keys: each swaps with this one
    # both ways through from_config (to BossScheduler with times=..., since their configs hold no schedule).
    _compatibles = ["FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"]
    order = 1

    @register_to_config
    def __init__(
        self,
        times: Sequence[float] | None = None,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: str = "exponential",
        stochastic_sampling: bool = False,
        searched_shape: Sequence[int] | None = None,
        searched_mu: float | None = None,
    ) -> None:
        if times is None:
            raise ValueError(
                "a BossScheduler steps at a BOSS schedule and none was given: use "
                "BossScheduler.from_schedule(sched, pipe.scheduler.config) (or from_config(config, "
                "times=sched.times.tolist()))"
            )
        refuse_stepping_keys(
            {"invert_sigmas": invert_sigmas, "stochastic_sampling": stochastic_sampling}, "BossScheduler"
        )
        check_choice(time_shift_type, ("exponential", "linear"), "time_shift_type")
        t = as_times(list(times), "times")
        if t[-1] != 1.0:
            raise ValueError(f"a BossScheduler's schedule must end at t = 1 (sigma 0), got t = {t[-1]!r}")
        self._times = t
        # Host values that step() reads. The sigmas are float32(1 - t), as a stock scheduler holds them; each
        # step's dt is their float32 difference, a CPU scalar tensor: the stock step multiplies by a float32
        # 0-d tensor, and a Python float would round dt * output differently in fp16/bf16.
        sigmas32 = torch.tensor((1.0 - t).tolist(), dtype=torch.float32)
        self._sigmas_host: list[float] = sigmas32.tolist()
        self._timesteps_host: list[float] = [s * num_train_timesteps for s in (1.0 - t[:-1]).tolist()]
        self._dts: list[torch.Tensor] = [sigmas32[i + 1] - sigmas32[i] for i in range(len(t) - 1)]
        self.num_inference_steps = len(t) - 1
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._set_tensors(None)
        self.init_noise_sigma = 1.0
        self._shift = shift
        # The resolution the schedule was searched at (Schedule.shape, Schedule.mu): a pipeline run at another
        # gets one warning per kind (a schedule is resolution-specific; the steps stay the schedule's).
        shape = None if searched_shape is None else check_shape(searched_shape, "searched_shape")
        self._searched_shape = shape
        self._searched_mu = None if searched_mu is None else check_float(searched_mu, "searched_mu")
        self._warned: set[str] = set()
        self._check_start()  # from_schedule's rule is registered before __init__ runs; from_config's, after

    @property
    def start(self) -> str:
        """The schedule's start rule as the config records it (``Schedule.start``); "noise" for bare times:
        the pipeline's latents, the noise itself, are the state at the first sigma."""
        rule = self.config.get(START_KEY, "noise")
        return check_choice(rule, START_RULES, f"start rule (config {START_KEY})")

    def _check_start(self) -> None:
        """Refuse (ValueError naming the rule) a recorded start rule the pipeline cannot honour."""
        check_diffusers_start(SimpleNamespace(times=self._times, start=self.start))

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any] | None = None, return_unused_kwargs: bool = False, **kwargs: Any
    ) -> BossScheduler | tuple[BossScheduler, dict[str, Any]]:
        """diffusers' ``from_config`` (and so ``from_pretrained``), then the recorded start rule checked: the
        config's private keys are registered only after construction."""
        out = super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)
        (out[0] if return_unused_kwargs else out)._check_start()
        return out

    def _set_tensors(self, device: torch.device | str | None) -> None:
        self.sigmas = torch.tensor(self._sigmas_host, dtype=torch.float32, device=device)
        self.timesteps = torch.tensor(self._timesteps_host, dtype=torch.float32, device=device)
        self.sigma_max = self._sigmas_host[0]
        self.sigma_min = self._sigmas_host[-2]

    @classmethod
    def from_schedule(
        cls, sched: Schedule | Sequence[float] | np.ndarray, config: Mapping[str, Any] | None = None
    ) -> BossScheduler:
        """A scheduler for ``sched`` (a Schedule or its times), carrying the stock scheduler's keys of
        ``config`` (e.g. ``pipe.scheduler.config``) so the pipeline's own ``mu`` computation still works.

        Raises:
            ValueError: ``config`` sets ``invert_sigmas`` or ``stochastic_sampling`` (as ``diffusers_sigmas``
                does), the schedule does not end at t = 1, or its start rule is "scaled" with a first time
                above 0 (a pipeline starts from the unscaled noise).
        """
        times = sched.times if isinstance(sched, Schedule) else as_times(sched, "times")
        carried = {k: config[k] for k in _CARRIED if config is not None and k in config}
        # The schedule's resolution (None for bare times), warned about when a pipeline runs at another.
        shape = sched.shape if isinstance(sched, Schedule) else None
        carried["searched_shape"] = None if shape is None else list(shape)
        carried["searched_mu"] = sched.mu if isinstance(sched, Schedule) else None
        # A private keyword: diffusers' register_to_config puts it in the config and does not pass it on.
        return cls(times=[float(t) for t in times], **carried, **{START_KEY: check_diffusers_start(sched)})

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(message, UserWarning, stacklevel=3)

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
        """Put ``timesteps`` (K,) and ``sigmas`` (K + 1,) on ``device`` and reset the step and begin index.

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
        if mu is not None and self._searched_mu is not None and not math.isclose(mu, self._searched_mu):
            self._warn_once(
                "mu",
                f"the pipeline passes mu = {float(mu):.6g} but this schedule was searched at mu = "
                f"{self._searched_mu:.6g} (another resolution): search one at this resolution",
            )
        self.num_inference_steps = k
        self._set_tensors(device)
        self._step_index = None
        self._begin_index = None

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """The identity (flow matching does not scale the model input)."""
        return sample

    def index_for_timestep(
        self, timestep: float | torch.Tensor, schedule_timesteps: torch.Tensor | None = None
    ) -> int:
        """The index of ``timestep`` in ``schedule_timesteps`` (default: ``self.timesteps``), compared in
        their float32 as the stock scheduler does (with two matches, the second). One device read.

        Raises:
            ValueError: ``timestep`` is not on the schedule (the stock scheduler raises an IndexError).
        """
        if schedule_timesteps is None:
            schedule_timesteps = self.timesteps
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.to(schedule_timesteps.device)
        indices = (schedule_timesteps == timestep).nonzero()
        if len(indices) == 0:
            value = timestep.tolist() if isinstance(timestep, torch.Tensor) else timestep
            raise ValueError(
                f"timestep {value} is not one of this schedule's timesteps {schedule_timesteps.tolist()}: "
                "pass one of scheduler.timesteps"
            )
        return int(indices[1 if len(indices) > 1 else 0].item())

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: torch.Generator | None = None,
        per_token_timesteps: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> FlowMatchEulerDiscreteSchedulerOutput | tuple[torch.Tensor]:
        """One Euler step from sigma_i to sigma_(i+1): ``sample + (sigma_(i+1) - sigma_i) * model_output``.

        The stock scheduler's signature and arithmetic: ``sample`` upcast to float32, the result cast back to
        ``model_output``'s dtype. The first step's index is ``begin_index`` when set, else the index of
        ``timestep`` on the schedule (one device read; a timestep not on it raises ValueError). Later steps
        count on from there and read nothing from the device.

        ``per_token_timesteps`` (LTX-condition): each token (B, N) steps from its own sigma to the schedule's
        next lower sigma, ``sample + (sigma_token - sigma_lower) * model_output``, kept in float32, as the
        stock scheduler does. ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise`` and ``generator`` do not change
        the stock scheduler's deterministic step either (and ``stochastic_sampling`` is refused at
        construction), so they are accepted and unused.

        Raises:
            ValueError: an integer timestep (an index from ``enumerate``, as the stock scheduler refuses), a
                timestep not on the schedule, or a step past the last.
        """
        if _is_integer_timestep(timestep):
            raise ValueError(
                "integer timesteps (e.g. an index from enumerate(timesteps)) are not supported: pass one of "
                "scheduler.timesteps as the timestep"
            )
        if self._searched_shape is not None and tuple(sample.shape[1:]) != self._searched_shape:
            self._warn_once(
                "shape",
                f"the pipeline steps latents of shape {tuple(sample.shape[1:])} but this schedule was "
                f"searched at {self._searched_shape} (another resolution): search one at this resolution",
            )
        if self._step_index is None:
            begin = self._begin_index
            self._step_index = begin if begin is not None else self.index_for_timestep(timestep)
        i = self._step_index
        if i >= len(self._dts):
            k = len(self._dts)
            raise ValueError(f"step {i + 1} of a {k}-step schedule: call set_timesteps to restart")
        sample = sample.to(torch.float32)
        if per_token_timesteps is not None:
            prev = sample + self._per_token_dt(per_token_timesteps) * model_output
        else:
            prev = (sample + self._dts[i] * model_output).to(model_output.dtype)
        self._step_index = i + 1
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def _per_token_dt(self, per_token_timesteps: torch.Tensor) -> torch.Tensor:
        """(B, N, 1): each token's sigma minus the largest schedule sigma below it (the stock rule)."""
        per_token_sigmas = per_token_timesteps / self.config.num_train_timesteps
        sigmas = self.sigmas.to(per_token_sigmas.device)[:, None, None]
        lower = (sigmas < per_token_sigmas[None] - 1e-6) * sigmas
        return per_token_sigmas[..., None] - lower.max(dim=0).values[..., None]

    def scale_noise(
        self, sample: torch.Tensor, timestep: float | torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The forward process ``sigma * noise + (1 - sigma) * sample`` (img2img, inpainting), in
        ``sample``'s dtype, with one sigma per entry of ``timestep`` (B,) broadcast over the rest.

        As the stock scheduler: without a begin index each timestep is looked up on the schedule (one device
        read); with one, every sample takes the current step's sigma (after the first step) or the begin
        index's (before).
        """
        if noise is None:
            raise ValueError("scale_noise needs the noise tensor")
        sigmas = self.sigmas.to(device=sample.device, dtype=sample.dtype)
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1)
        if self._begin_index is None:
            schedule = self.timesteps.to(sample.device)
            indices = [self.index_for_timestep(t, schedule) for t in timestep]
        elif self._step_index is not None:
            indices = [self._step_index] * len(timestep)
        else:
            indices = [self._begin_index] * len(timestep)
        sigma = sigmas[indices].reshape(-1, *([1] * (sample.ndim - 1)))
        return sigma * noise + (1.0 - sigma) * sample

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: float | torch.Tensor
    ) -> torch.Tensor:
        """``scale_noise`` with ``add_noise``'s argument order, for pipelines that prefer it (Wan
        video-to-video calls ``add_noise`` when a scheduler has it, else ``scale_noise``: the same result)."""
        return self.scale_noise(original_samples, timesteps, noise)

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
            ``pooled_projections``, Flux's ``guidance``, ...), each with a batch dimension of 1 or P (one
            common P, the bank size). A tensor with batch 1 is broadcast to the batch of x (one prompt for
            every sample); tensors with batch P > 1 are a **bank of P conditionings**: noise row m uses
            conditioning m mod P. The rows are given by :meth:`for_rows` (``boss_fast.ode.for_rows``; the
            search and straightening pass each sample's global noise index, so the pairing does not depend on
            batching or ranks); a plain call ``velocity(x, t)`` on B samples is ``for_rows(arange(B))``
            (sample b uses conditioning b mod P; a batch of exactly P gets the bank in order). Tensors are
            registered as non-persistent buffers, so ``.to(device)`` and ``copy.deepcopy`` carry them.
            Non-tensor values (e.g. ``joint_attention_kwargs``) are passed unchanged.
        fixed: keyword arguments passed unchanged whatever the batch, e.g. Flux's ``txt_ids`` (T, 3) and
            ``img_ids`` (N, 3), which have no batch dimension (tensors are buffers too).
        negative: classifier-free guidance as SD3 pipelines run it: the unconditional (negative-prompt)
            value of every tensor conditioning key (same keys, same shapes but the batch: 1, or P to pair
            each bank entry with its own negative), e.g.
            ``{"encoder_hidden_states": neg_embeds, "pooled_projections": neg_pooled}``. The transformer then
            runs on one doubled batch ``[x; x]`` with conditioning ``[negative; conditioning]``.
        guidance_scale: with ``negative``, the CFG weight w: ``velocity(x, t)`` is then the guided velocity
            ``v_u + w (v_c - v_u)`` (:func:`boss_fast.ode.cfg_combine`; the pipeline's combine of the model
            outputs, negated), a plain velocity to search a schedule on or to sample. Without it (None),
            the module follows ``Sampler(guidance=w)``'s protocol instead: called on a doubled batch
            (2B, ...) it returns [v_uncond; v_cond]; both step bit for bit alike.

    The transformer's parameters are this module's (``transformer.*``), so ``bf.straighten`` fine-tunes them
    (LoRA through peft targets its Linear layers).

    Example:
        >>> class Echo(nn.Module):  # stands for a transformer: returns its conditioning as the output
        ...     def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
        ...         return (encoder_hidden_states.expand_as(hidden_states),)
        >>> bank = DiffusersVelocity(Echo(), encoder_hidden_states=torch.tensor([[1.0], [2.0], [3.0]]))
        >>> bank.bank_size
        3
        >>> bank.for_rows(torch.tensor([4, 5]))(torch.zeros(2, 1), torch.zeros(2)).flatten().tolist()
        [-2.0, -3.0]
    """

    def __init__(
        self,
        transformer: nn.Module,
        timestep_scale: float = 1000.0,
        *,
        fixed: Mapping[str, Any] | None = None,
        negative: Mapping[str, torch.Tensor] | None = None,
        guidance_scale: float | None = None,
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
        self.bank_size = _bank_size(
            {k: getattr(self, f"cond_{k}") for k in self._tensor_keys}, "conditioning"
        )
        self.guidance_scale = (
            None if guidance_scale is None else check_scale(guidance_scale, "guidance_scale")
        )
        self.guided = negative is not None
        if negative is None and guidance_scale is not None:
            raise ValueError("guidance_scale needs negative= (the unconditional conditioning to guide from)")
        if negative is not None:
            self._register_negative(negative)

    def _register_negative(self, negative: Mapping[str, torch.Tensor]) -> None:
        if set(negative) != set(self._tensor_keys):
            raise ValueError(
                f"negative must give every tensor conditioning key: got {sorted(negative)}, the conditioning "
                f"has {sorted(self._tensor_keys)}"
            )
        for key, value in negative.items():
            cond = getattr(self, f"cond_{key}")
            if (
                not isinstance(value, torch.Tensor)
                or value.ndim != cond.ndim
                or value.shape[1:] != cond.shape[1:]
            ):
                what = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(
                    f"negative {key!r} must be a tensor shaped like the conditioning's {tuple(cond.shape)} "
                    f"but for the batch, got {what}"
                )
            self.register_buffer(f"neg_{key}", value, persistent=False)
        negatives = {k: getattr(self, f"neg_{k}") for k in self._tensor_keys}
        p = _bank_size(negatives, "negative")
        if p not in (1, self.bank_size):
            raise ValueError(
                f"negative has a bank of {p} entries but the conditioning has {self.bank_size}: give batch-1 "
                "negatives (one for every prompt) or one per prompt"
            )

    def for_rows(self, rows: torch.Tensor) -> VelocityFn:
        """The velocity for a batch of noise rows ``rows`` (int64 (B,), the noises' global indices, >= 0):
        sample b uses bank entry ``rows[b] mod P``. This is the seam ``boss_fast.ode.for_rows`` calls; with
        one conditioning (P = 1) it is this module itself.

        Raises:
            ValueError: ``rows`` is not a 1-D integer tensor of non-negative indices.
        """
        if (
            not isinstance(rows, torch.Tensor)
            or rows.ndim != 1
            or rows.is_floating_point()
            or rows.is_complex()
        ):
            what = (
                f"shape {tuple(rows.shape)}, {rows.dtype}" if isinstance(rows, torch.Tensor) else type(rows)
            )
            raise ValueError(f"rows must be a 1-D integer tensor of noise indices, got {what}")
        if len(rows) and int(rows.min()) < 0:
            raise ValueError(f"rows must be >= 0 (global noise indices), got {int(rows.min())}")
        if self.bank_size == 1:
            return self
        device = getattr(self, f"cond_{self._tensor_keys[0]}").device
        return functools.partial(self._velocity, entries=(rows % self.bank_size).to(device))

    def conditioning(
        self, batch: int, prefix: str = "cond", entries: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """The keyword arguments for a batch of ``batch`` states: batch-1 tensors expanded, a bank's tensors
        indexed by ``entries`` ((batch,) bank indices; default ``arange(batch) mod P``). ``prefix="neg"``
        gives the negative conditioning's."""
        if entries is not None and len(entries) != batch:
            raise ValueError(f"for_rows was given {len(entries)} rows but x has batch {batch}")
        out = dict(self._other)
        out.update({key: getattr(self, f"fixed_{key}") for key in self._fixed_keys})
        for key in self._tensor_keys:
            value = getattr(self, f"{prefix}_{key}")
            p = value.shape[0]
            if p == 1:
                value = value.expand(batch, *value.shape[1:]) if batch != 1 else value
            elif entries is not None:
                value = value.index_select(0, entries.to(value.device))
            elif batch != p:  # a plain call: rows 0 .. batch - 1
                value = value.index_select(0, torch.arange(batch, device=value.device) % p)
            out[key] = value
        return out

    def _doubled_conditioning(self, batch: int, entries: torch.Tensor | None = None) -> dict[str, Any]:
        """[negative; conditioning] for a doubled batch of 2 x ``batch`` states (the pipeline's order)."""
        pos, neg = self.conditioning(batch, entries=entries), self.conditioning(batch, "neg", entries)
        return {k: torch.cat([neg[k], pos[k]]) if k in self._tensor_keys else v for k, v in pos.items()}

    def _run(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        timestep = (1.0 - t) * self.timestep_scale
        out = self.transformer(hidden_states=x, timestep=timestep, return_dict=False, **cond)
        out = out[0] if isinstance(out, tuple | list) else out
        return (-out).to(x.dtype)

    @property
    def doubled_batch(self) -> bool:
        """True with ``negative`` and no ``guidance_scale``: the module then follows ``Sampler(guidance=)``'s
        doubled-batch protocol (:func:`boss_fast.ode.is_cfg_pair`); otherwise it is a plain velocity."""
        return self.guided and self.guidance_scale is None

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity at x (B, ...) and t (B,); a bank pairs sample b with entry b mod P (as
        ``for_rows(arange(B))``)."""
        return self._velocity(x, t)

    def _velocity(
        self, x: torch.Tensor, t: torch.Tensor, entries: torch.Tensor | None = None
    ) -> torch.Tensor:
        if not self.guided:
            return self._run(x, t, self.conditioning(len(x), entries=entries))
        if self.guidance_scale is None:  # Sampler(guidance=)'s protocol: x is already [x; x]
            if len(x) % 2:
                raise ValueError(
                    "with negative= and no guidance_scale this takes a doubled batch [x; x], got batch "
                    f"{len(x)}"
                )
            return self._run(x, t, self._doubled_conditioning(len(x) // 2, entries))
        b = len(x)
        v = self._run(torch.cat([x, x]), torch.cat([t, t]), self._doubled_conditioning(b, entries))
        return cfg_combine(v[:b], v[b:], self.guidance_scale).to(x.dtype)


def _bank_size(tensors: Mapping[str, torch.Tensor], what: str) -> int:
    """P: the one batch > 1 of ``tensors`` (1 when every batch is 1); ValueError for two different ones."""
    batches = {key: value.shape[0] for key, value in tensors.items() if value.shape[0] != 1}
    sizes = set(batches.values())
    if len(sizes) > 1:
        raise ValueError(f"{what} tensors must have batch 1 or one common bank size P, got batches {batches}")
    return sizes.pop() if sizes else 1
