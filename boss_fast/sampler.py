"""``Sampler``: the low-latency K-step Euler sampler (static buffers, baked schedule, compile, CUDA graphs).

``Sampler(model, schedule)(noise)`` equals ``boss_fast.sampling.sample(model, noise, schedule)`` up to the
storage dtype's rounding, but is built for latency:

- one static state buffer (B, ...) allocated once; the noise is copied in, K Euler steps update it in place,
  and the call returns a copy of it;
- the schedule's times and steps are host floats baked in at construction; the per-step time tensors
  t_k (B,) are allocated once too: the loop reads no device value and creates no tensor of its own (the
  model's own activations aside);
- ``mode="eager"`` runs that loop; ``"compile"`` wraps it in ``torch.compile(fullgraph=True)`` (the first
  call compiles; ``compile_seconds`` reports it apart from steady state); ``"cuda_graph"`` captures the whole
  K-step loop once as one CUDA graph and replays it; ``"auto"`` is cuda_graph on CUDA and, elsewhere, the
  faster of compile and eager *measured* when the buffers are built (``timings`` keeps the figures).

The same machinery integrates teacher trajectories: ``solver`` "heun" or "rk4" runs those fixed-step methods
(the stages of :func:`boss_fast.trajectories.ode_step`, on the same preallocated time tensors), and
``record="states"`` or ``"all"`` keeps every state (and Euler slope) in static (K + 1, B, ...) buffers that
:meth:`Sampler.trajectory` returns; :func:`boss_fast.trajectories.teacher_trajectory` takes ``mode=`` and
runs on a recording sampler. ``guidance=w`` evaluates the model on a doubled batch (unconditional half first,
diffusers' order) and combines ``v_u + w (v_c - v_u)`` inside the Euler kernel.

Models that opt in to the fused-head protocol (:class:`FusedHeadModel`, e.g. the bundled DiT) run as
``trunk`` + one :func:`boss_fast.kernels.linear_euler` per step, the head's GEMM with the Euler update in its
epilogue; every other ``velocity(x, t)`` runs as the model then :func:`boss_fast.kernels.euler_step`.

Unlike ``sample``, the sampler does not check the states for non-finite values (that would need a host read
inside the captured loop); check the result if the model may diverge.
"""

from __future__ import annotations

import itertools
import statistics
import time
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from boss_fast._backends import kernel_backend
from boss_fast._validation import (
    as_times,
    check_choice,
    check_float,
    check_int,
    check_noise,
    check_velocity_output,
)
from boss_fast.kernels.euler_step import euler_step_forward
from boss_fast.kernels.linear_euler import linear_euler_forward
from boss_fast.schedule import Schedule
from boss_fast.trajectories import Trajectory, _first_nonfinite_step

__all__ = ["SAMPLER_MODES", "SAMPLER_SOLVERS", "FusedHeadModel", "Sampler"]

SAMPLER_MODES: tuple[str, ...] = ("auto", "eager", "compile", "cuda_graph")
# The fixed-step methods of boss_fast.trajectories.ode_step, stage for stage.
SAMPLER_SOLVERS: tuple[str, ...] = ("euler", "heun", "rk4")
_RECORD = (None, "states", "all")

_loop_ids = itertools.count()

# Repetitions per candidate when "auto" measures compile against eager (median of these, after a warm-up).
_AUTO_REPS = 3


@runtime_checkable
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
    if getattr(model, "fused_head", False) is not True or not isinstance(model, FusedHeadModel):
        return None
    if not isinstance(model.head, nn.Linear):
        return None
    return _Head(
        model.trunk, model.head.weight, model.head.bias, int(model.patch_size), tuple(model.sample_shape)
    )


def _first_parameter(model: object) -> torch.Tensor | None:
    if isinstance(model, nn.Module):
        return next(iter(model.parameters()), None)
    return None


class Sampler:
    """A K-step Euler sampler over a fixed schedule, batch size, dtype and device.

    Args:
        model: ``velocity(x, t)`` (x (B, ...), t (B,) in x's dtype; t = 0 noise, t = 1 data).
        sched: a :class:`~boss_fast.schedule.Schedule` or its times (strictly increasing in [0, 1]).
        mode: "auto", "eager", "compile" or "cuda_graph" (module docstring).
        batch_size: B; None takes it from the first noise.
        dtype: the state's dtype; default the model's parameter dtype (float32 without parameters).
        device: the state's device; default the model's parameter device (CPU without parameters).
        fused: use the fused head + Euler kernel; None (default) uses it when the model opts in and the kernel
            backend is Triton (on the torch backend fusing buys nothing); True on a model that does not
            opt in raises.
        backend: kernel backend for the Euler update, "auto", "triton" or "torch"
            (:func:`boss_fast._backends.kernel_backend`).
        solver: "euler" (the few-step sampler), "heun" or "rk4" (teacher trajectories; 2 and 4 model
            evaluations per step, the stages of :func:`boss_fast.trajectories.ode_step`).
        guidance: classifier-free guidance weight w, or None. The model is then called on a doubled batch
            (2B, ...) = [x; x] with t (2B,), and must return [v_uncond; v_cond] (it owns the conditioning,
            unconditional half first as in diffusers); the kernel combines v_u + w (v_c - v_u).
        record: None, "states" or "all": keep every state (and with "all" the combined Euler slope at each
            state, as :class:`~boss_fast.trajectories.Trajectory` defines it) in static buffers; read them
            with :meth:`trajectory`. Costs (K + 1) (or 2K + 1) states of memory.

    Attributes:
        mode: the mode asked for; ``resolved_mode`` is the one running (known once the buffers exist).
        times: (K + 1,) float64 schedule times.
        compile_seconds: wall time of the compiling first call ("compile", or "auto" when it measured).
        timings: {"eager": s, "compile": s} medians measured by "auto" on CPU.

    Raises:
        ValueError / TypeError: unknown mode, solver or record, cuda_graph without a CUDA device, bad
            schedule, batch size, dtype or guidance, fused=True for a model without the protocol or with
            another solver, guidance or record="all"; at call time, noise whose shape, dtype or device differ
            from the sampler's.

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
        solver: str = "euler",
        guidance: float | None = None,
        record: str | None = None,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be callable as velocity(x, t), got {type(model).__name__}")
        self.model = model
        self.times = as_times(sched.times if isinstance(sched, Schedule) else sched, "schedule times")
        hosts = self.times.tolist()  # Python floats, baked into every launch
        self._t_hosts: list[float] = hosts[:-1]
        self._steps: list[float] = [t1 - t0 for t0, t1 in zip(hosts[:-1], hosts[1:], strict=True)]
        self.mode = check_choice(mode, SAMPLER_MODES, "mode")
        self.solver = check_choice(solver, SAMPLER_SOLVERS, "solver")
        self.guidance = None if guidance is None else check_float(guidance, "guidance")
        if record not in _RECORD:
            raise ValueError(f"unknown record {record!r}; expected None, 'states' or 'all'")
        self.record = record
        param = _first_parameter(model)
        self.device = (
            torch.device(device)
            if device is not None
            else (param.device if param is not None else torch.device("cpu"))
        )
        self.dtype = dtype if dtype is not None else (param.dtype if param is not None else torch.float32)
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {self.dtype!r}")
        if self.mode == "cuda_graph" and self.device.type != "cuda":
            raise ValueError(
                f"mode 'cuda_graph' captures a CUDA graph and needs a CUDA device; this sampler's device is "
                f"{self.device} (use 'compile', 'eager' or 'auto')"
            )
        self.batch_size = None if batch_size is None else check_int(batch_size, "batch_size")
        self.backend = kernel_backend(backend, self.device, self.dtype)
        head = _fused_head(model)
        # The fused kernel is one Euler step from the head's output: no stages, no doubled batch, and the
        # velocity it never materialises cannot be recorded.
        plain = self.solver == "euler" and self.guidance is None and self.record != "all"
        if fused is None:
            fused = head is not None and plain and self.backend == "triton"
        elif fused and head is None:
            raise ValueError(
                "fused=True needs a model with the fused-head protocol (fused_head = True, trunk(x, t), a "
                f"Linear head, patch_size, sample_shape; see FusedHeadModel); {type(model).__name__} has not"
            )
        elif fused and not plain:
            raise ValueError(
                "fused=True runs one Euler step from the head's output: it takes solver='euler', no guidance "
                f"and record other than 'all' (got solver={self.solver!r}, guidance={self.guidance!r}, "
                f"record={self.record!r})"
            )
        self.fused = bool(fused)
        self._head = head if self.fused else None
        self.sample_shape: tuple[int, ...] | None = head.sample_shape if head is not None else None
        self.resolved_mode: str | None = None
        self.compile_seconds: float | None = None
        self.timings: dict[str, float] = {}
        self._x: torch.Tensor | None = None
        self._run: Callable[[], None] | None = None
        # Built with the buffers: per step, the source and destination state views, the stage time tensors.
        self._src: list[torch.Tensor] = []
        self._dst: list[torch.Tensor] = []
        self._stage_t: list[tuple[torch.Tensor, ...]] = []
        self._states: torch.Tensor | None = None
        self._velocities: torch.Tensor | None = None
        self._doubled: torch.Tensor | None = None
        self._scratch: torch.Tensor | None = None
        if self.batch_size is not None and self.sample_shape is not None:
            self._build(None)

    @property
    def num_steps(self) -> int:
        """K, the number of Euler steps (= model evaluations) per call."""
        return len(self._steps)

    # -- the hot loop -------------------------------------------------------------------------------------

    def _velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model at (x, t); with guidance on the static doubled batch [x; x], returning (2B, ...)."""
        if self._doubled is None:
            return self.model(x, t)
        b = x.shape[0]
        self._doubled[:b].copy_(x)
        self._doubled[b:].copy_(x)
        return self.model(self._doubled, t)

    def _loop(self, x: torch.Tensor) -> torch.Tensor:
        """K steps on the static buffers (``x`` is the state, or the recorded states): host floats only, no
        sync, and no tensor created here beyond the stages' arithmetic (the model's activations aside).

        Stage for stage :func:`boss_fast.trajectories.ode_step`, so eager on the torch backend reproduces the
        teacher bit for bit."""
        head, backend, g, b = self._head, self.backend, self.guidance, self.batch_size
        for i, h in enumerate(self._steps):
            src, dst, ts = self._src[i], self._dst[i], self._stage_t[i]
            if head is not None:
                features = head.trunk(src, ts[0])
                linear_euler_forward(
                    features, head.weight, head.bias, src, h, head.patch_size, backend, out=dst
                )
                continue
            k1 = self._velocity(src, ts[0])
            if self._velocities is not None:  # the combined slope at the state, as Trajectory defines it
                if g is None:
                    self._velocities[i].copy_(k1)
                else:
                    torch.lerp(k1[:b], k1[b:], g, out=self._velocities[i])
            if self.solver == "euler":
                slope = k1
            elif self.solver == "heun":
                k2 = self._velocity(euler_step_forward(src, k1, h, g, backend, out=self._scratch), ts[1])
                slope = (k1 + k2) * 0.5
            else:
                k2 = self._velocity(
                    euler_step_forward(src, k1, 0.5 * h, g, backend, out=self._scratch), ts[1]
                )
                k3 = self._velocity(
                    euler_step_forward(src, k2, 0.5 * h, g, backend, out=self._scratch), ts[1]
                )
                k4 = self._velocity(euler_step_forward(src, k3, h, g, backend, out=self._scratch), ts[2])
                slope = (k1 + 2.0 * (k2 + k3) + k4) * (1.0 / 6.0)
            euler_step_forward(src, slope, h, g, backend, out=dst)
        return x

    # -- building -----------------------------------------------------------------------------------------

    def _build(self, noise: torch.Tensor | None) -> None:
        """Allocate the static buffers, check the model once, and set up the resolved mode."""
        shape = (self.batch_size, *self.sample_shape)
        new = dict(dtype=self.dtype, device=self.device)
        self._stage_t = []
        k = self.num_steps
        if self.record is None:
            self._x = torch.zeros(shape, **new)
            self._src = self._dst = [self._x] * k
        else:  # the loop advances row i into row i + 1 of the recorded states; _x is the first row
            self._states = torch.zeros((k + 1, *shape), **new)
            self._x = self._states[0]
            self._src, self._dst = list(self._states[:-1]), list(self._states[1:])
            if self.record == "all":
                self._velocities = torch.zeros((k, *shape), **new)
        if noise is not None:
            self._x.copy_(noise)
        if self.solver != "euler":
            self._scratch = torch.zeros(shape, **new)
        rows = shape[0] if self.guidance is None else 2 * shape[0]
        if self.guidance is not None:
            self._doubled = torch.zeros((rows, *shape[1:]), **new)
        cache: dict[float, torch.Tensor] = {}  # one (rows,) tensor per distinct stage time

        def at(t: float) -> torch.Tensor:
            if t not in cache:
                cache[t] = torch.full((rows,), t, **new)
            return cache[t]

        hosts = self.times.tolist()
        for t0, t1 in zip(hosts[:-1], hosts[1:], strict=True):
            half = t0 + 0.5 * (t1 - t0)  # ode_step's midpoint, the same float
            stages = {"euler": (t0,), "heun": (t0, t1), "rk4": (t0, half, t1)}[self.solver]
            self._stage_t.append(tuple(at(t) for t in stages))
        with torch.no_grad():  # one checked evaluation: a wrong model fails here, with sample's message
            probe = self._x if self._doubled is None else self._doubled
            check_velocity_output(self._velocity(self._x, self._stage_t[0][0]), probe, self._t_hosts[0])
        mode = self.mode
        if mode == "auto":
            mode = "cuda_graph" if self.device.type == "cuda" else self._measure_auto()
        if mode == "eager":
            self._run = self._run_eager
        elif mode == "compile":
            self._setup_compile()
        else:
            self._setup_cuda_graph()
        self.resolved_mode = mode

    def _run_eager(self) -> None:
        with torch.no_grad():
            self._loop(self._x)

    def _setup_compile(self) -> None:
        # torch.compile caches graphs (and counts recompiles) per code object: with one shared ``_loop`` the
        # ninth Sampler in a process hit dynamo's recompile limit (8) and fullgraph=True failed hard
        # (FailOnRecompileLimitHit, measured). Each sampler therefore compiles its own copy of the code.
        code = Sampler._loop.__code__.replace(co_name=f"_sampler_loop_{next(_loop_ids)}")
        loop = types.FunctionType(code, Sampler._loop.__globals__, code.co_name)
        compiled = torch.compile(types.MethodType(loop, self), fullgraph=True, dynamic=False)

        def run() -> None:
            with torch.no_grad():
                compiled(self._x)

        if self.compile_seconds is None:
            saved = self._x.clone()
            start = time.perf_counter()
            run()  # compiles
            self.compile_seconds = time.perf_counter() - start
            self._x.copy_(saved)
        self._run = run

    def _setup_cuda_graph(self) -> None:
        saved = self._x.clone()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(2):  # warm-up outside capture: Triton JIT, cuBLAS handles and workspaces
                self._loop(self._x)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            self._loop(self._x)
        self._x.copy_(saved)
        self._run = graph.replay

    def _measure_auto(self) -> str:
        """Time eager and compile on the real buffers; return the faster (eager if compiling fails)."""
        saved = self._x.clone()
        self._run_eager()  # warm-up
        self.timings["eager"] = self._median_seconds(self._run_eager)
        try:
            self._setup_compile()
            self.timings["compile"] = self._median_seconds(self._run)
        except Exception as err:  # any compiler failure means: fall back to eager, loudly
            warnings.warn(
                f"boss_fast.Sampler: torch.compile failed ({type(err).__name__}: {err}); using eager",
                RuntimeWarning,
                stacklevel=4,
            )
            self._x.copy_(saved)
            return "eager"
        self._x.copy_(saved)
        return "compile" if self.timings["compile"] < self.timings["eager"] else "eager"

    def _median_seconds(self, run: Callable[[], None]) -> float:
        samples = []
        for _ in range(_AUTO_REPS):
            start = time.perf_counter()
            run()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

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
                "(build another Sampler for another batch size or sample shape)"
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

    def __call__(self, noise: torch.Tensor) -> torch.Tensor:
        """Run the K steps from ``noise`` (B, ...) at ``times[0]``; return the state at ``times[-1]``.

        The first call builds the buffers if the construction could not (batch size or sample shape unknown
        then), which includes compiling, capturing or "auto"'s measurement. Returns a new tensor (a copy of
        the static state buffer, so later calls do not overwrite it).
        """
        noise = self._check_noise(noise)
        if self._x is None:
            self.batch_size = noise.shape[0]
            self.sample_shape = tuple(noise.shape[1:])
            self._build(noise)
        self._x.copy_(noise)
        self._run()
        return self._dst[-1].clone()

    def trajectory(self, noise: torch.Tensor, *, check_finite: bool = False) -> Trajectory:
        """Run the K steps from ``noise`` and return every state (and with record="all" every slope).

        Needs a sampler built with ``record``; returns copies (N = K + 1 states, (K, B, ...) velocities or
        None), which later calls do not overwrite. ``check_finite=True`` checks the values as
        :func:`boss_fast.trajectories.teacher_trajectory` does (one host read after the loop; ValueError
        naming the grid time where non-finite values first appear).
        """
        if self.record is None:
            raise ValueError("trajectory() needs a sampler built with record='states' or record='all'")
        self(noise)
        velocities = None if self._velocities is None else self._velocities.clone()
        traj = Trajectory(states=self._states.clone(), velocities=velocities, times=self.times.copy())
        problem = _first_nonfinite_step(traj.states, traj.velocities, traj.times) if check_finite else None
        if problem is not None:
            raise ValueError(problem)
        return traj
