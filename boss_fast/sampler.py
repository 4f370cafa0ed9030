"""The low-latency K-step samplers: ``Sampler`` (the few-step Euler sampler) and ``TeacherRecorder`` (the
recording teacher), two small front ends over one runner (static buffers, baked schedule, compile, CUDA
graphs).

``Sampler(model, schedule)(noise)`` equals ``boss_fast.ode.sample(model, noise, schedule)`` up to the
storage dtype's rounding, but is built for latency:

- one static state buffer (B, ...) allocated once; the noise is copied in, K Euler steps update it in place,
  and the call returns a copy of it;
- the schedule's times and steps are host floats baked in at construction; the per-step time tensors
  t_k (B,) are allocated once too: the loop reads no device value and creates no tensor of its own (the
  model's own activations aside);
- ``mode="eager"`` runs that loop; ``"compile"`` wraps it in ``torch.compile(fullgraph=True)`` (the first
  call compiles; ``compile_seconds`` reports it apart from steady state); ``"cuda_graph"`` captures the whole
  K-step loop once as one CUDA graph and replays it; ``"compile_graph"`` captures the *compiled* loop in one
  CUDA graph (Inductor's fused kernels without their launch cost; compile time apart, as for "compile");
  ``"auto"`` runs the faster *measured* when the buffers are built (``timings`` keeps the figures): on CUDA
  cuda_graph or compile_graph, elsewhere eager or compile. The two graph modes need a CUDA device and are
  refused by name elsewhere.

``guidance=w`` evaluates the model on a doubled batch (unconditional half first, diffusers' order) and
combines ``v_u + w (v_c - v_u)`` inside the Euler kernel. Models that opt in to the fused-head protocol
(:class:`FusedHeadModel`, e.g. the bundled DiT) run as ``trunk`` + one :func:`boss_fast.kernels.linear_euler`
per step, the head's GEMM with the Euler update in its epilogue; every other ``velocity(x, t)`` runs as the
model then :func:`boss_fast.kernels.euler_step`.

``TeacherRecorder(model, grid, solver=, record=)(noise)`` integrates a teacher trajectory on the same runner:
``solver`` "euler", "heun" or "rk4" runs the stages of :data:`boss_fast.ode.FIXED_STEP_METHODS` on
preallocated time tensors, and ``record`` "states" or "all" keeps every state (and the combined Euler slope)
in static (K + 1, B, ...) buffers; the call returns a :class:`~boss_fast.ode.Trajectory`.
:func:`boss_fast.trajectories.teacher_trajectory` takes ``mode=`` and runs on one.

The pieces: ``_Runner`` checks the shared arguments (each once, into its attribute), allocates the time
tensors and the doubled batch, runs the model check, resolves the mode and holds the final check; each front
end allocates its state buffers and defines ``_step``, chosen or written so that the hot ``_loop`` (K calls
of ``_step``) has no branch on the head, guidance or recording. The eager, compiled and CUDA-graph runners
(``_eager_runner``, ``_compiled_runner``, ``_cuda_graph_runner``) each wrap ``_loop`` (the graph runner
captures the eager or the compiled one), and "auto" measures between them (``_Runner._auto_mode``).

Checks, as ``sample`` makes them, without a host read inside the loop: every model output's type, shape,
dtype and device at every step (metadata only, :func:`boss_fast._validation.check_velocity_output`; eager
checks every call; under ``torch.compile`` and CUDA-graph capture shapes and dtypes are static, so the check
made when the loop is traced or captured holds for every replay of it, and a retrace checks again), and the
result's finiteness once per call (one reduction and one host read after the loop; on failure the sampler
reruns eagerly step by step to name the step, the recorder reads its recorded states). ``check_finite=False``
skips that final read (benchmarks/results/sampler_checks_cpu.md measures its cost).
"""

from __future__ import annotations

import itertools
import statistics
import time
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from boss_fast._backends import kernel_backend
from boss_fast._runtime import module_placement
from boss_fast._validation import (
    STEP_SOLVERS,
    check_choice,
    check_int,
    check_noise,
    check_scale,
    check_velocity_output,
    schedule_start,
    schedule_times,
)
from boss_fast.kernels.euler_step import euler_step_forward
from boss_fast.kernels.linear_euler import fused_head_default, linear_euler_forward
from boss_fast.ode import (
    FIXED_STEP_METHODS,
    Trajectory,
    cfg_combine,
    first_nonfinite_step,
    is_cfg_pair,
    stage_times,
)
from boss_fast.schedule import Schedule

__all__ = ["RECORDS", "SAMPLER_MODES", "SAMPLER_SOLVERS", "FusedHeadModel", "Sampler", "TeacherRecorder"]

SAMPLER_MODES: tuple[str, ...] = ("auto", "eager", "compile", "cuda_graph", "compile_graph")
# The modes that capture a CUDA graph (a CUDA device or a refusal naming the mode).
GRAPH_MODES: tuple[str, ...] = ("cuda_graph", "compile_graph")
# The fixed-step methods of boss_fast.ode.FIXED_STEP_METHODS, stage for stage.
SAMPLER_SOLVERS: tuple[str, ...] = STEP_SOLVERS
# What a TeacherRecorder keeps: every state, or every state and the combined Euler slope at it.
RECORDS: tuple[str, ...] = ("states", "all")

_loop_ids = itertools.count()

# Repetitions per candidate when "auto" measures its two candidates (median of these, after a warm-up).
_AUTO_REPS = 3


class FusedHeadModel(Protocol):
    """The opt-in protocol for the fused head + Euler kernel.

    A model implements it by having ``fused_head = True`` and
    ``forward(x, t) == unpatchify(head(trunk(x, t))).to(x.dtype)`` where ``trunk(x, t)`` returns
    (B, T, K) features, ``head`` is an ``nn.Linear(K, p * p * C)`` and ``unpatchify`` is
    :func:`boss_fast.kernels.unpatchify` with ``patch_size`` p (DiT's layout); ``sample_shape`` is (C, H, W).
    """

    fused_head: bool
    head: nn.Linear
    patch_size: int
    sample_shape: tuple[int, ...]

    def trunk(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class _Head:
    trunk: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    weight: torch.Tensor
    bias: torch.Tensor | None
    patch_size: int
    sample_shape: tuple[int, ...]


def _fused_head(model: object) -> _Head | None:
    """The fused-head pieces of ``model`` when it opts in (see :class:`FusedHeadModel`), else None."""
    # Plain getattr, not isinstance(model, FusedHeadModel): from Python 3.12 a runtime protocol looks members
    # up with inspect.getattr_static, which cannot see an nn.Module's submodules (head lives in _modules), so
    # the isinstance check refused every DiT there (seen on the GPU machine's Python 3.12).
    if getattr(model, "fused_head", False) is not True:
        return None
    head, trunk = getattr(model, "head", None), getattr(model, "trunk", None)
    patch_size, sample_shape = getattr(model, "patch_size", None), getattr(model, "sample_shape", None)
    if not isinstance(head, nn.Linear) or not callable(trunk) or patch_size is None or sample_shape is None:
        return None
    return _Head(trunk, head.weight, head.bias, int(patch_size), tuple(sample_shape))


def _placement(
    model: object, dtype: torch.dtype | None, device: torch.device | str | None, mode: str
) -> tuple[torch.device, torch.dtype]:
    model_device, model_dtype = module_placement(model)
    device = torch.device(device) if device is not None else (model_device or torch.device("cpu"))
    dtype = dtype if dtype is not None else (model_dtype or torch.float32)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if mode in GRAPH_MODES and device.type != "cuda":
        raise ValueError(
            f"mode {mode!r} captures a CUDA graph and needs a CUDA device; this sampler's device is "
            f"{device} (use 'compile', 'eager' or 'auto')"
        )
    return device, dtype


def _use_fused(
    model: object, head: _Head | None, fused: bool | None, backend: str, guidance, batch: int | None, dtype
) -> bool | None:
    """Whether the fused head runs; None when the default depends on a batch size not known yet."""
    # The fused kernel is one Euler step from the head's output: no doubled batch to combine.
    if fused is None:
        if head is None or guidance is not None or backend != "triton":
            return False
        return fused_head_default(batch, dtype)  # where it was measured to win (kernels.linear_euler)
    if fused and head is None:
        raise ValueError(
            "fused=True needs a model with the fused-head protocol (fused_head = True, trunk(x, t), a "
            f"Linear head, patch_size, sample_shape; see FusedHeadModel); {type(model).__name__} has not"
        )
    if fused and guidance is not None:
        raise ValueError(
            "fused=True runs one Euler step from the head's output: it takes no guidance "
            f"(got guidance={guidance!r})"
        )
    return bool(fused)


class _Runner:
    """What both front ends share: the checked arguments, the time tensors, the doubled batch for guidance,
    the build-time model check, the mode (eager, compile, the two graphs, auto's measurement) and the call.

    A front end sets ``_method`` (its fixed-step method) and ``sample_shape`` (when the model knows it)
    before :meth:`_ready`, allocates its state buffers in ``_allocate`` (``_x`` the state the noise is
    copied into, ``_src[i]`` / ``_dst[i]`` step i's source and destination) and defines ``_step(i)``.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        sched: Schedule | Sequence[float] | np.ndarray | torch.Tensor,
        mode: str,
        batch_size: int | None,
        dtype: torch.dtype | None,
        device: torch.device | str | None,
        backend: str,
        guidance: float | None,
        check_finite: bool,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be callable as velocity(x, t), got {type(model).__name__}")
        if not isinstance(check_finite, bool):
            raise TypeError(f"check_finite must be True or False, got {check_finite!r}")
        self.model, self.check_finite = model, check_finite
        self.times: np.ndarray = schedule_times(sched)
        # The start rule (Schedule.start; plain times: the noise itself): "scaled" multiplies the copied noise
        # by the host float 1 - times[0], the same operation as boss_fast.ode.start_state (same bits).
        self.start: str = schedule_start(sched)
        self._start_scale: float | None = 1.0 - float(self.times[0]) if self.start == "scaled" else None
        self.mode: str = check_choice(mode, SAMPLER_MODES, "mode")
        self.guidance: float | None = None if guidance is None else check_scale(guidance, "guidance")
        if self.guidance is not None and not is_cfg_pair(model):
            raise TypeError(
                f"guidance={self.guidance!r} calls the model on a doubled batch [x; x] and needs it to "
                f"return [v_uncond; v_cond]; {type(model).__name__} does not say it does (doubled_batch = "
                "True): pass boss_fast.cfg_pair(v_cond, v_uncond), or guidance=None with a plain velocity "
                "such as boss_fast.guided_velocity(v_cond, v_uncond, w)"
            )
        self.device, self.dtype = _placement(model, dtype, device, self.mode)
        self.batch_size: int | None = None if batch_size is None else check_int(batch_size, "batch_size")
        self.backend: str = kernel_backend(backend, self.device, self.dtype)
        hosts = self.times.tolist()  # Python floats, baked into every launch
        self._step_sizes: list[float] = [t1 - t0 for t0, t1 in zip(hosts[:-1], hosts[1:], strict=True)]
        self._method = FIXED_STEP_METHODS["euler"]
        self.sample_shape: tuple[int, ...] | None = None
        self.resolved_mode: str | None = None
        self.compile_seconds: float | None = None
        self.timings: dict[str, float] = {}
        self._x: torch.Tensor | None = None
        self._run: Callable[[], None] | None = None
        # Built with the buffers: per step, the source and destination state views, the stage time tensors.
        self._src: list[torch.Tensor] = []
        self._dst: list[torch.Tensor] = []
        self._stage_t: list[tuple[torch.Tensor, ...]] = []
        self._stage_hosts: list[tuple[float, ...]] = []  # the same times as host floats, for the messages
        self._doubled: torch.Tensor | None = None
        self._velocity = self._plain_velocity if self.guidance is None else self._doubled_velocity

    @property
    def num_steps(self) -> int:
        """K, the number of steps per call (Euler: = model evaluations)."""
        return len(self._step_sizes)

    def _ready(self) -> None:
        """Build now when the batch size and sample shape are known, else at the first call."""
        if self.batch_size is not None and self.sample_shape is not None:
            self._build(None)

    # -- the hot loop -------------------------------------------------------------------------------------

    def _plain_velocity(self, x: torch.Tensor, t: torch.Tensor, step: int, t_host: float) -> torch.Tensor:
        """The model at (x, t), checked (metadata only)."""
        return check_velocity_output(self.model(x, t), x, t_host, step)

    def _doubled_velocity(self, x: torch.Tensor, t: torch.Tensor, step: int, t_host: float) -> torch.Tensor:
        """The model on the static doubled batch [x; x] (guidance), checked, returning (2B, ...)."""
        b = x.shape[0]
        self._doubled[:b].copy_(x)
        self._doubled[b:].copy_(x)
        return check_velocity_output(self.model(self._doubled, t), self._doubled, t_host, step)

    def _step(self, i: int) -> None:
        raise NotImplementedError  # each front end defines its own step

    def _loop(self, x: torch.Tensor) -> torch.Tensor:
        """K steps on the static buffers (``x`` is the state buffer): host floats only, no sync, and no
        tensor created here beyond the step's arithmetic (the model's activations aside)."""
        for i in range(len(self._step_sizes)):
            self._step(i)
        return x

    # -- building -----------------------------------------------------------------------------------------

    def _allocate(self, shape: tuple[int, ...], new: dict) -> None:
        raise NotImplementedError  # each front end allocates its own state buffers

    def _build(self, noise: torch.Tensor | None) -> None:
        """Allocate the static buffers, check the model once, and set up the resolved mode."""
        shape = (self.batch_size, *self.sample_shape)
        new = dict(dtype=self.dtype, device=self.device)
        self._allocate(shape, new)
        if noise is not None:
            self._load_start(noise)
        rows = shape[0] if self.guidance is None else 2 * shape[0]
        if self.guidance is not None:
            self._doubled = torch.zeros((rows, *shape[1:]), **new)
        cache: dict[float, torch.Tensor] = {}  # one (rows,) tensor per distinct stage time

        def at(t: float) -> torch.Tensor:
            if t not in cache:
                cache[t] = torch.full((rows,), t, **new)
            return cache[t]

        hosts = self.times.tolist()
        pairs = zip(hosts[:-1], hosts[1:], strict=True)
        self._stage_hosts = [stage_times(self._method, t0, t1) for t0, t1 in pairs]
        # ode_step's stage times, the same floats
        self._stage_t = [tuple(at(t) for t in stages) for stages in self._stage_hosts]
        # One checked evaluation: a wrong model fails here, with sample's message. Without guidance on one
        # row, so building a sampler does not cost a full-batch model evaluation.
        with torch.no_grad():
            if self._doubled is None:
                x1 = self._x[:1]
                check_velocity_output(self.model(x1, self._stage_t[0][0][:1]), x1, hosts[0], 0)
            else:
                self._velocity(self._x, self._stage_t[0][0], 0, hosts[0])
        self._start()

    def _start(self) -> None:
        """Resolve "auto" and set ``_run`` to the mode's runner over the built buffers."""
        if self.mode == "auto":
            self.resolved_mode, self._run = self._auto_mode()
        else:
            self.resolved_mode, self._run = self.mode, self._runner(self.mode)

    def _runner(self, mode: str) -> Callable[[], None]:
        """The runner of ``mode`` (not "auto") over the built buffers."""
        if mode == "eager":
            return _eager_runner(self)
        if mode == "compile":
            return self._compiled()
        body = _eager_runner(self) if mode == "cuda_graph" else self._compiled()
        return _cuda_graph_runner(self, body)

    def _compiled(self) -> Callable[[], None]:
        """The compiled runner; its first (compiling) call is timed once into ``compile_seconds``."""
        run = _compiled_runner(self)
        if self.compile_seconds is None:
            saved = self._x.clone()
            start = time.perf_counter()
            run()  # compiles
            self.compile_seconds = time.perf_counter() - start
            self._x.copy_(saved)
        return run

    def _auto_mode(self) -> tuple[str, Callable[[], None]]:
        """Time the plain and the compiled candidate on the real buffers (on CUDA their CUDA graphs, which
        replay the same kernels without a launch each: 3-9x eager at batch 1 on an H200,
        benchmarks/results/gpu/README.md); return the faster and its runner (the plain one, loudly, if
        compiling or capturing the compiled loop fails)."""
        plain, compiled = GRAPH_MODES if self.device.type == "cuda" else ("eager", "compile")
        saved = self._x.clone()
        runners = {plain: self._runner(plain)}
        try:
            runners[compiled] = self._runner(compiled)
        except Exception as err:  # any compiler failure means: fall back to the plain loop, loudly
            warnings.warn(
                f"boss_fast.{type(self).__name__}: torch.compile failed ({type(err).__name__}: {err}); "
                f"using {plain}",
                RuntimeWarning,
                stacklevel=6,
            )
        for name, run in runners.items():
            run()  # warm-up (the compiled one compiled in its first call, timed apart)
            self.timings[name] = _median_seconds(run, self.device)
        self._x.copy_(saved)
        best = min(runners, key=self.timings.__getitem__)
        return best, runners[best]

    # -- calling ------------------------------------------------------------------------------------------

    def _check_noise(self, noise: object) -> torch.Tensor:
        noise = check_noise(noise)
        if noise.dtype != self.dtype or noise.device != self.device:
            raise ValueError(
                f"noise has dtype {noise.dtype} on {noise.device}; this sampler runs {self.dtype} on "
                f"{self.device} (convert the noise, or build the sampler with that dtype/device)"
            )
        if self._x is not None and noise.shape != self._x.shape:
            raise ValueError(
                f"noise has shape {tuple(noise.shape)}; this sampler's buffers are {tuple(self._x.shape)} "
                "(build another one for another batch size or sample shape)"
            )
        if self.batch_size is not None and noise.shape[0] != self.batch_size:
            raise ValueError(
                f"noise has batch {noise.shape[0]}; this sampler's batch_size is {self.batch_size}"
            )
        if self.sample_shape is not None and tuple(noise.shape[1:]) != tuple(self.sample_shape):
            raise ValueError(
                f"noise has sample shape {tuple(noise.shape[1:])}; the model's is {tuple(self.sample_shape)}"
            )
        return noise

    def _load_start(self, noise: torch.Tensor) -> None:
        """The start state into the state buffer: the noise, scaled by the start rule where it says so."""
        self._x.copy_(noise)
        if self._start_scale is not None:
            self._x.mul_(self._start_scale)

    def _run_from(self, noise: object) -> torch.Tensor:
        """Check ``noise``, build on the first call if the construction could not (which includes
        compiling, capturing or "auto"'s measurement), and run the K steps from it; returns the checked
        noise."""
        noise = self._check_noise(noise)
        if self._x is None:
            self.batch_size = noise.shape[0]
            self.sample_shape = tuple(noise.shape[1:])
            self._build(noise)
        self._load_start(noise)
        self._run()
        return noise


class Sampler(_Runner):
    """A K-step Euler sampler over a fixed schedule, batch size, dtype and device.

    Args:
        model: ``velocity(x, t)`` (x (B, ...), t (B,) in x's dtype; t = 0 noise, t = 1 data).
        sched: a :class:`~boss_fast.schedule.Schedule` or its times (strictly increasing in [0, 1]).
        mode: "auto", "eager", "compile", "cuda_graph" or "compile_graph" (module docstring).
        batch_size: B; None takes it from the first noise.
        dtype: the state's dtype; default the model's parameter dtype (float32 without parameters).
        device: the state's device; default the model's parameter device (CPU without parameters).
        fused: use the fused head + Euler kernel; None (default) uses it when the model opts in, there is
            no guidance, the kernel backend is Triton (on the torch backend fusing buys nothing) and
            :func:`boss_fast.kernels.fused_head_default` says the kernel wins at this batch size and dtype;
            True on a model that does not opt in, or with guidance, raises.
        backend: kernel backend for the Euler update, "auto", "triton" or "torch"
            (:func:`boss_fast._backends.kernel_backend`).
        guidance: classifier-free guidance weight w, or None. The model is then called on a doubled batch
            (2B, ...) = [x; x] with t (2B,), and must return [v_uncond; v_cond] (it owns the conditioning,
            unconditional half first as in diffusers, and says so with ``doubled_batch = True``:
            :func:`boss_fast.ode.is_cfg_pair`; any other model is refused); the kernel combines
            v_u + w (v_c - v_u) (:func:`boss_fast.ode.cfg_combine`).
            ``boss_fast.ode.cfg_pair(v_cond, v_uncond)`` builds such a model from two velocity callables;
            ``guided_velocity(v_cond, v_uncond, w)`` is the same field as one velocity (the one to search a
            schedule on): with Euler they step bit for bit alike.
        check_finite: check the result for NaN/inf after every call (one reduction, one host read; a
            ValueError names the step where they first appeared). False skips it, for a hot path that
            checks elsewhere (benchmarks/results/sampler_checks_cpu.md measures the cost).

    Attributes:
        mode: the mode asked for; ``resolved_mode`` is the one running (known once the buffers exist).
        times: (K + 1,) float64 schedule times.
        fused: whether the fused head + Euler kernel runs (None until the batch size is known, where the
            default depends on it).
        compile_seconds: wall time of the compiling first call ("compile", "compile_graph", or "auto").
        timings: the medians "auto" measured: {"eager": s, "compile": s} on CPU, {"cuda_graph": s,
            "compile_graph": s} on CUDA.

    Raises:
        ValueError / TypeError: unknown mode, a graph mode without a CUDA device, bad schedule, batch size,
            dtype or guidance, guidance for a model that is no CFG pair, fused=True for a model without the
            protocol or with guidance; at call time, noise whose shape, dtype or device differ from the
            sampler's, a model output of another type, shape, dtype or device at any step, or a non-finite
            result (each naming the step and its time).

    Example:
        >>> sampler = Sampler(lambda x, t: torch.ones_like(x), [0.0, 0.5, 1.0], mode="eager")
        >>> sampler(torch.zeros(2, 3))
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        sched: Schedule | Sequence[float] | np.ndarray | torch.Tensor,
        mode: str = "auto",
        batch_size: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        *,
        fused: bool | None = None,
        backend: str = "auto",
        guidance: float | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__(model, sched, mode, batch_size, dtype, device, backend, guidance, check_finite)
        head = _fused_head(model)
        self._found_head = head
        self.fused: bool | None = _use_fused(
            model, head, fused, self.backend, self.guidance, self.batch_size, self.dtype
        )
        self.sample_shape = head.sample_shape if head is not None else None
        if self.fused is not None:
            self._set_fused(self.fused)
        self._ready()

    def _set_fused(self, fused: bool) -> None:
        self.fused = fused
        self._head = self._found_head if fused else None
        self._step = self._fused_step if fused else self._euler_step  # chosen once: no branch in _loop

    def _allocate(self, shape: tuple[int, ...], new: dict) -> None:
        if self.fused is None:  # the default depends on the batch size, known now
            self._set_fused(fused_head_default(shape[0], self.dtype))
        self._x = torch.zeros(shape, **new)
        self._src = self._dst = [self._x] * self.num_steps  # every step updates the one state in place

    def _euler_step(self, i: int) -> None:
        """Step i: the model (on [x; x] with guidance, combined in the kernel), then the Euler update."""
        v = self._velocity(self._x, self._stage_t[i][0], i, self._stage_hosts[i][0])
        euler_step_forward(self._x, v, self._step_sizes[i], self.guidance, self.backend, out=self._x)

    def _fused_step(self, i: int) -> None:
        """Step i: the trunk, then the head's GEMM with the Euler update in its epilogue."""
        head, x = self._head, self._x
        features = head.trunk(x, self._stage_t[i][0])
        h = self._step_sizes[i]
        linear_euler_forward(features, head.weight, head.bias, x, h, head.patch_size, self.backend, out=x)

    def _first_nonfinite(self, noise: torch.Tensor) -> str:
        """Where a non-finite result came from: an eager rerun from ``noise``, one host read per step (only
        after the final check failed, so the hot path keeps its one read)."""
        if not bool(torch.isfinite(noise).all()):
            return "noise contains non-finite values"
        self._load_start(noise)
        hosts = self.times.tolist()
        with torch.no_grad():
            for i in range(self.num_steps):
                self._step(i)
                if not bool(torch.isfinite(self._x).all()):
                    return (
                        f"velocity returned non-finite values in step {i}, from t = {hosts[i]!r} to "
                        f"t = {hosts[i + 1]!r}"
                    )
        return (
            f"the {self.resolved_mode} run's result holds non-finite values that an eager rerun from the "
            "same noise does not reproduce"
        )

    def __call__(self, noise: torch.Tensor) -> torch.Tensor:
        """Run the K steps from the start state of ``noise`` (B, ...) at ``times[0]`` (the schedule's start
        rule); return the state at ``times[-1]``.

        The first call builds the buffers if the construction could not (batch size or sample shape unknown
        then), which includes compiling, capturing or "auto"'s measurement. Returns a new tensor (a copy of
        the static state buffer, so later calls do not overwrite it).
        """
        noise = self._run_from(noise)
        out = self._x.clone()
        if self.check_finite and not bool(torch.isfinite(out).all()):  # one reduction, one host read
            raise ValueError(f"Sampler: {self._first_nonfinite(noise)}")
        return out


class TeacherRecorder(_Runner):
    """A teacher trajectory on the sampler's runner: a fixed-step solver over a grid, every state recorded.

    ``TeacherRecorder(model, grid, solver="heun")(noise)`` equals
    ``boss_fast.teacher_trajectory(model, noise, grid, "heun")`` bit for bit in eager mode on the torch
    kernel backend (stage for stage :func:`boss_fast.ode.ode_step`, the same table entry and time floats),
    but reuses its static buffers, compiled loop or captured CUDA graph for every batch of the same shape.

    Args:
        model, sched, mode, batch_size, dtype, device, backend, guidance: as :class:`Sampler`'s (``sched``
            is the teacher's grid, N = K + 1 points). With guidance the recorded slope is the combined one.
        solver: "euler", "heun" or "rk4" (1, 2 and 4 model evaluations per step).
        record: "all" (default: every state and the combined Euler slope at each state, as
            :class:`~boss_fast.ode.Trajectory` defines it) or "states" (no slopes; half the memory). Costs
            (K + 1) (or 2K + 1) states of memory in static buffers.
        check_finite: check every recorded state and slope after every call (one host read; a ValueError
            names the grid time where non-finite values first appear, as ``teacher_trajectory``).

    Raises:
        ValueError / TypeError: as :class:`Sampler`'s, and an unknown solver or record.

    Example:
        >>> teacher = TeacherRecorder(lambda x, t: 2 * t[:, None] * torch.ones_like(x), [0.0, 0.5, 1.0],
        ...                           mode="eager", solver="heun")
        >>> teacher(torch.zeros(1, 1)).states.flatten()  # x(t) = t^2, which Heun integrates exactly
        tensor([0.0000, 0.2500, 1.0000])
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        sched: Schedule | Sequence[float] | np.ndarray | torch.Tensor,
        mode: str = "auto",
        batch_size: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        *,
        solver: str = "euler",
        record: str = "all",
        backend: str = "auto",
        guidance: float | None = None,
        check_finite: bool = True,
    ) -> None:
        self.solver: str = check_choice(solver, SAMPLER_SOLVERS, "solver")
        self.record: str = check_choice(record, RECORDS, "record")
        super().__init__(model, sched, mode, batch_size, dtype, device, backend, guidance, check_finite)
        self._method = FIXED_STEP_METHODS[self.solver]
        self._states: torch.Tensor | None = None
        self._velocities: torch.Tensor | None = None
        self._scratch: torch.Tensor | None = None
        # Chosen once, so _step has no branch on the recording or the guidance.
        if self.record == "states":
            self._keep = self._keep_nothing
        elif self.guidance is None:
            self._keep = self._keep_slope
        else:
            self._keep = self._keep_combined_slope
        self._ready()

    def _allocate(self, shape: tuple[int, ...], new: dict) -> None:
        # The loop advances row i into row i + 1 of the recorded states; _x is the first row.
        k = self.num_steps
        self._states = torch.zeros((k + 1, *shape), **new)
        self._x = self._states[0]
        self._src, self._dst = list(self._states[:-1]), list(self._states[1:])
        if self.record == "all":
            self._velocities = torch.zeros((k, *shape), **new)
        if self.solver != "euler":
            self._scratch = torch.zeros(shape, **new)

    def _keep_nothing(self, i: int, k1: torch.Tensor) -> None:
        pass

    def _keep_slope(self, i: int, k1: torch.Tensor) -> None:
        self._velocities[i].copy_(k1)

    def _keep_combined_slope(self, i: int, k1: torch.Tensor) -> None:
        b = self.batch_size  # k1 is the doubled batch's [v_u; v_c]: the slope the state moves along
        self._velocities[i].copy_(cfg_combine(k1[:b], k1[b:], self.guidance))

    def _step(self, i: int) -> None:
        """Step i: row i -> row i + 1 of the recorded states, stage for stage
        :func:`boss_fast.ode.ode_step`."""
        g, backend = self.guidance, self.backend
        h, src, dst, ts, hosts = (
            self._step_sizes[i],
            self._src[i],
            self._dst[i],
            self._stage_t[i],
            self._stage_hosts[i],
        )
        k1 = self._velocity(src, ts[0], i, hosts[0])
        self._keep(i, k1)
        slopes = [k1]
        for s, c in enumerate(self._method.fractions, start=1):
            stage = euler_step_forward(src, slopes[-1], c * h, g, backend, out=self._scratch)
            slopes.append(self._velocity(stage, ts[s], i, hosts[s]))
        euler_step_forward(src, self._method.combine(slopes), h, g, backend, out=dst)

    def __call__(self, noise: torch.Tensor) -> Trajectory:
        """Run the K steps from the start state of ``noise`` (B, ...) at ``times[0]``; return every state
        (N = K + 1) and, with record="all", every slope ((K, B, ...)), as copies that later calls do not
        overwrite."""
        self._run_from(noise)
        velocities = None if self._velocities is None else self._velocities.clone()
        traj = Trajectory(states=self._states.clone(), velocities=velocities, times=self.times.copy())
        problem = (
            first_nonfinite_step(traj.states, traj.velocities, traj.times) if self.check_finite else None
        )
        if problem is not None:
            raise ValueError(problem)
        return traj


# -- the runners: each wraps a built front end's ``_loop`` one way and returns a no-argument callable -------


def _eager_runner(sampler: _Runner) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            sampler._loop(sampler._x)

    return run


def _compiled_runner(sampler: _Runner) -> Callable[[], None]:
    # torch.compile caches graphs (and counts recompiles) per code object: with one shared ``_loop`` the
    # ninth Sampler in a process hit dynamo's recompile limit (8) and fullgraph=True failed hard
    # (FailOnRecompileLimitHit, measured). Each sampler therefore compiles its own copy of the code.
    code = _Runner._loop.__code__.replace(co_name=f"_sampler_loop_{next(_loop_ids)}")
    loop = types.FunctionType(code, _Runner._loop.__globals__, code.co_name)
    compiled = torch.compile(types.MethodType(loop, sampler), fullgraph=True, dynamic=False)

    def run() -> None:
        with torch.no_grad():
            try:
                compiled(sampler._x)
            except Exception:
                # A check that fails while dynamo traces (shapes and dtypes are static, so trace time is when
                # the model's output is checked) surfaces as dynamo's "Observed exception"; the eager loop
                # raises the check's own message (step, time, what was wrong). Any other failure re-raises.
                sampler._loop(sampler._x)
                raise

    return run


def _cuda_graph_runner(sampler: _Runner, body: Callable[[], None]) -> Callable[[], None]:
    """Capture ``body`` (the eager or the compiled runner: the whole K-step loop) once as one CUDA graph,
    after two warm-up runs; replay it per call."""
    x, device = sampler._x, sampler.device
    saved = x.clone()
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up outside capture: Triton JIT, cuBLAS handles and workspaces
            body()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()  # each runner holds its own no_grad
    x.copy_(saved)
    return graph.replay


def _median_seconds(run: Callable[[], None], device: torch.device) -> float:
    samples = []
    for _ in range(_AUTO_REPS):
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)
