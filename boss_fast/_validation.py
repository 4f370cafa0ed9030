"""Boundary helpers shared by every layer above (grids, ode, schedule, sampler, trajectories, cost, search).

Every public function validates its inputs here, once, with a message that names the argument and the
offending value; the kernels behind them assume valid input. Atomic file writes live here too because the
cost checkpoint and the schedule JSON both need them.
"""

from __future__ import annotations

import math
import operator
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import IO

import numpy as np
import torch

# Fixed-step methods (one ode_step each; the sampler's solvers) and the teacher's: plus adaptive dopri5
# (torchdiffeq), the reference solution at the grid times.
STEP_SOLVERS: tuple[str, ...] = ("euler", "heun", "rk4")
SOLVERS: tuple[str, ...] = (*STEP_SOLVERS, "dopri5")
METRICS: tuple[str, ...] = ("l2sq", "l2")
# torch.Generator.manual_seed takes an unsigned 64-bit seed: 2^64 overflows ("Overflow when unpacking long").
MAX_SEED = 2**64 - 1
# One sample's shape: at most 16 dimensions of at most 2^31 each (a schedule file records it).
MAX_SHAPE_DIMS = 16
# Where sampling starts: the rule giving the state at a schedule's first time t_s = times[0] from the noise.
# "zero": the first time is pinned at the grid's first point and the state is the noise (BOSS as published);
# "noise": the noise itself is the state at t_s, whatever t_s (a diffusers pipeline's txt2img latents with a
# first sigma below 1; OptimalSteps' search); "scaled": (1 - t_s) * noise (ComfyUI's flow models from an empty
# latent: noise_scaling = sigma * noise + (1 - sigma) * latent with latent = 0).
START_RULES: tuple[str, ...] = ("zero", "noise", "scaled")


def check_choice(value: object, choices: tuple[str, ...], name: str) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")
    return value


def check_teacher(solver: object, mode: object, mode_name: str = "mode") -> str:
    """Return the teacher's ``solver`` (one of SOLVERS) after checking that it can run in ``mode``.

    Modes other than None run the fixed-step solvers on a ``TeacherRecorder``; adaptive dopri5 runs in
    torchdiffeq only, so ``solver="dopri5"`` with a mode raises a ValueError saying so.
    """
    solver = check_choice(solver, SOLVERS, "solver")
    if solver == "dopri5" and mode is not None:
        raise ValueError(
            f"solver='dopri5' runs in torchdiffeq and takes {mode_name}=None, got {mode_name}={mode!r}: a "
            f"mode runs the fixed-step solvers ({', '.join(map(repr, STEP_SOLVERS))}) on a TeacherRecorder"
        )
    return solver


def check_int(value: object, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    """Return ``value`` as a Python int in [``minimum``, ``maximum``] (no upper bound when None).

    The package's one integer rule: a non-integer (bool, float, str, None) is a TypeError, an integer out of
    range a ValueError.
    """
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        k = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if maximum is not None and not minimum <= k <= maximum:
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {k}")
    if k < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {k}")
    return k


def check_seed(value: object, name: str = "seed") -> int:
    """Return a seed as a Python int in [0, 2^64 - 1] (:data:`MAX_SEED`, what ``torch.Generator`` takes)."""
    seed = check_int(value, name, minimum=0)
    if seed > MAX_SEED:
        raise ValueError(f"{name} must be in [0, 2^64 - 1] (a torch.Generator seed), got {seed}")
    return seed


def check_shape(shape: object, name: str = "shape") -> tuple[int, ...]:
    """One sample's shape (no batch dimension) as a tuple: 1 to :data:`MAX_SHAPE_DIMS` integers in [1, 2^31].

    A bare integer is a TypeError that says how to write it (``(2,)``), not Python's "'int' object is not
    iterable".
    """
    if isinstance(shape, str | bytes) or not isinstance(shape, Sequence | torch.Size):
        raise TypeError(
            f"{name} must be a sequence of integers (one sample's shape, e.g. (2,) or (3, 32, 32)), got "
            f"{shape!r}"
        )
    dims = tuple(check_int(d, f"{name} entry") for d in shape)
    if not 1 <= len(dims) <= MAX_SHAPE_DIMS or any(d > 2**31 for d in dims):
        raise ValueError(f"{name} must have 1 to {MAX_SHAPE_DIMS} entries, each in [1, 2^31], got {dims}")
    return dims


def check_float(value: object, name: str) -> float:
    """Return ``value`` as a finite Python float (TypeError if not a real number, ValueError if infinite)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    f = float(value)
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {f}")
    return f


def check_scale(value: object, name: str = "guidance scale") -> float:
    """Return a classifier-free guidance weight as a finite Python float: the package's one guidance check.

    Every public function that takes a guidance scale calls it (``cfg_combine``, ``guided_velocity``,
    ``Sampler(guidance=)``, ``euler_step(guidance=)``, ``DiffusersVelocity(guidance_scale=)``). A scale is
    one host number: a tensor (even 0-d: it would be a per-element scale or need a device read), a bool, a
    string or None is a TypeError; NaN or an infinity a ValueError (every guided value would be NaN or inf).
    """
    if isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a real number (a host float), got a tensor of shape {tuple(value.shape)}; "
            "pass float(w) for one scale"
        )
    return check_float(value, name)


def check_store_dir(store_dir: object, store: str) -> None:
    """Refuse a ``store_dir`` that is not None or a path, one given with a store other than "disk" (the
    only store that writes files: the folder would be ignored), and one that is not an existing folder this
    process can write in (a missing folder, a file, a read-only filesystem), when the settings are built
    rather than when the search first writes its rows."""
    if store_dir is None:
        return
    if not isinstance(store_dir, str | os.PathLike) or not os.fspath(store_dir):
        raise TypeError(f"store_dir must be None or a non-empty path, got {store_dir!r}")
    if store != "disk":
        raise ValueError(
            f"store_dir is the folder of store='disk'; store={store!r} takes None, got {store_dir!r}"
        )
    path = os.fspath(store_dir)
    if not os.path.isdir(path):
        what = "is a file" if os.path.exists(path) else "does not exist"
        raise ValueError(f"store_dir {path!r} {what}: store='disk' needs an existing folder to write in")
    try:  # as root, os.access says yes to a read-only filesystem: try it (an unnamed file, gone on close)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ValueError(f"store_dir {path!r}: cannot write in it ({err.strerror})") from None


# The reduced precisions a model may run in under ``torch.autocast`` (search and straightening alike).
AUTOCAST_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16)


def check_autocast(value: object, name: str = "autocast") -> torch.dtype | None:
    """Return ``value`` if it is None or one of :data:`AUTOCAST_DTYPES` (TypeError/ValueError naming
    ``name`` and what is accepted otherwise)."""
    if value is None or value in AUTOCAST_DTYPES:
        return value  # type: ignore[return-value]
    kind = "a torch.dtype" if isinstance(value, torch.dtype) else f"a {type(value).__name__}"
    raise (ValueError if isinstance(value, torch.dtype) else TypeError)(
        f"{name} must be None, torch.bfloat16 or torch.float16 (the model's precision under torch.autocast), "
        f"got {value!r} ({kind})"
    )


def check_dtype(value: object, name: str = "dtype") -> torch.dtype | None:
    """Return ``value`` if it is None or a floating ``torch.dtype`` ("float64", a string, is a TypeError)."""
    if value is None:
        return None
    if not isinstance(value, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype such as torch.float64, got {value!r}")
    if not value.is_floating_point:
        raise TypeError(f"{name} must be a floating dtype (torch.float16 .. float64), got {value}")
    return value


def as_times(times: object, name: str = "times") -> np.ndarray:
    """Validate a time grid and return it as a float64 numpy copy.

    Accepts a sequence, a numpy array or a torch tensor (any device: read once to the host). The grid must be
    1-D, hold at least 2 finite values inside [0, 1] (t = 0 noise, t = 1 data) and be strictly increasing.
    """
    if isinstance(times, torch.Tensor):
        times = times.detach().to("cpu", torch.float64).numpy()
    try:
        arr = np.array(times, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a 1-D sequence of real numbers, got {type(times).__name__}"
        ) from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size < 2:
        raise ValueError(f"{name} must hold at least 2 points, got {arr.size}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name} must be finite; {name}[{bad[0]}] = {arr[bad[0]].item()}")
    out = np.flatnonzero((arr < 0.0) | (arr > 1.0))
    if out.size:
        raise ValueError(
            f"{name} must lie in [0, 1] (0 noise, 1 data); {name}[{out[0]}] = {arr[out[0]].item()!r}"
        )
    flat = np.flatnonzero(np.diff(arr) <= 0.0)
    if flat.size:
        i = int(flat[0])
        raise ValueError(
            f"{name} must be strictly increasing; "
            f"{name}[{i + 1}] = {arr[i + 1].item()!r} <= {name}[{i}] = {arr[i].item()!r}"
        )
    return arr


def schedule_times(schedule: object, name: str = "schedule times") -> np.ndarray:
    """The validated times of a ``Schedule`` (anything with a ``times`` attribute) or of a time grid."""
    return as_times(getattr(schedule, "times", schedule), name)


def schedule_start(schedule: object) -> str:
    """The start rule of a ``Schedule`` (its ``start``), or "noise" for plain times: the noise is the state at
    the first time, as every sampler of plain times has always done."""
    return check_choice(getattr(schedule, "start", "noise"), START_RULES, "start")


# The state each start rule gives at the first time t, in words (boss_fast.ode.start_state is the arithmetic).
_START_STATES = {"zero": "the noise itself", "noise": "the noise itself", "scaled": "(1 - t) * noise"}


def check_start(schedule: object, rule: str, who: str, remedy: str) -> str:
    """The start rule of ``schedule`` (:func:`schedule_start`) when a tool that always starts from ``rule``'s
    state (``who``: e.g. "a diffusers pipeline") samples it exactly, else a ValueError naming both rules and
    ``remedy``.

    Exact when both rules give the same state at the schedule's first time t: "zero" and "noise" both start
    from the noise itself, and "scaled" does too at t = 0 ((1 - 0) * noise); otherwise the states differ by
    the factor 1 - t.
    """
    own, t = schedule_start(schedule), float(schedule_times(schedule)[0])
    if (own == "scaled") == (check_choice(rule, START_RULES, "rule") == "scaled") or t == 0.0:
        return own
    raise ValueError(
        f"this schedule's start rule is {own!r}: sampling starts at t = {t!r} from {_START_STATES[own]}, but "
        f"{who} starts there from {_START_STATES[rule]} (start rule {rule!r}); {remedy}"
    )


def check_noise(noise: object, name: str = "noise") -> torch.Tensor:
    """Check that ``noise`` is a floating torch tensor of shape (B, ...) with B >= 1."""
    if not isinstance(noise, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, ...), got {type(noise).__name__}")
    if not noise.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {noise.dtype}")
    if noise.ndim < 1:
        raise ValueError(f"{name} must have a batch dimension (B, ...), got a 0-d tensor")
    if noise.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one sample, got shape {tuple(noise.shape)}")
    if noise.numel() == 0:
        raise ValueError(
            f"{name} must hold at least one value per sample, got shape {tuple(noise.shape)} "
            "(a 0 in the sample shape)"
        )
    return noise


def check_velocity_output(v: object, x: torch.Tensor, t: float, step: int | None = None) -> torch.Tensor:
    """Check a velocity model's output against its input ``x`` at time ``t``: metadata only, no sync.

    Type, shape, dtype and device must match ``x`` (a meta tensor is on another device). ``step``, when given,
    is named in the message beside the time (the sampler's step index). Under ``torch.compile`` these
    comparisons are static: they are evaluated once, when the loop is traced.
    """
    at = f"t = {t!r}" if step is None else f"t = {t!r} (step {step})"
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"velocity returned {type(v).__name__} at {at}, expected a torch.Tensor")
    if v.shape != x.shape:
        raise ValueError(
            f"velocity returned shape {tuple(v.shape)} at {at}, expected the input's {tuple(x.shape)}"
        )
    if v.dtype != x.dtype:
        raise ValueError(f"velocity returned dtype {v.dtype} at {at}, expected the input's {x.dtype}")
    if v.device != x.device:
        raise ValueError(f"velocity returned a tensor on {v.device} at {at}, expected {x.device}")
    return v


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file so that readers see either the old content or the complete new one, never a part.

    ``write(f)`` fills a temporary file in the same directory (same filesystem, so the rename is atomic); it
    is flushed and fsynced, then ``os.replace``-d over ``path``, and the directory is fsynced so the rename
    itself survives a power loss.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as err:  # name the caller's path, not the temporary's
        raise type(err)(err.errno, err.strerror, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        try:
            os.replace(tmp, path)
        except OSError as err:  # e.g. path is a directory
            raise type(err)(err.errno, err.strerror, path) from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):  # POSIX only; Windows cannot open a directory
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
