"""``boss-fast``: the command line. Subcommands: demo, schedule, sigmas, straighten, sample, dp-example.

Only argument parsing and I/O live here; the work is in the library functions each subcommand calls. Every
path, device and optional dependency a command needs is checked before its computation starts, and a user
error or Ctrl-C ends with one line on stderr (exit 2, or 130 for Ctrl-C), never a traceback; files are
written atomically, so an interrupted command leaves no partial output. An exception raised inside the user's
``--model module:attr`` is a user error too: one line naming the model and the call (time, batch shape).
``BOSS_FAST_DEBUG=1`` prints the traceback of any reported error as well.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

import boss_fast as bf
from boss_fast._validation import SOLVERS, START_RULES, atomic_write
from boss_fast.comfyui import check_comfyui_start
from boss_fast.demo import DemoConfig, demo_straighten_settings, run_demo
from boss_fast.engine import STORES
from boss_fast.integrations.sigmas import (
    DIFFUSERS_START,
    check_diffusers_start,
    comfyui_text,
    diffusers_sigmas,
)
from boss_fast.models import WeightsFileError, bundled_velocities, load_bundled, save_weights
from boss_fast.polish import POLISHES
from boss_fast.report import save_sample_grid
from boss_fast.schedule import max_budget, read_json, read_schedule_file, schedule_for_steps
from boss_fast.straighten import StraightenMemory, StraightenSettings
from boss_fast.straighten.settings import INPUTS, PAIR_SOLVER, PAIR_SPACINGS, PAIR_STEPS

# The shape of one sample of each bundled velocity model (the classifier is not one), from boss_fast.models.
BUNDLED_SHAPES = bundled_velocities()
# Optional dependencies a flag needs: (module, extra to install).
_NEEDS = {"dopri5": ("torchdiffeq", "reference"), "lora": ("peft", "lora")}
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
# What a user's input can cause: bad values, files, devices, missing extras, unreadable weights, numbers or
# sizes beyond what the machine holds. An exception raised inside the user's model is reported as one line too
# (_model_call); anything else (a RuntimeError from inside boss_fast's own computation, a KeyError, ...) is a
# bug and keeps its traceback.
_USER_ERRORS = (ValueError, TypeError, OSError, ImportError, WeightsFileError, OverflowError, MemoryError)
# Set to 1 to see the traceback of an error the CLI reports in one line.
DEBUG_ENV = "BOSS_FAST_DEBUG"
# The user's models imported in this process (--model module:attr), to recognise their exceptions.
_IMPORTED_MODELS: dict[int, tuple[object, str]] = {}


class UsageError(Exception):
    """A problem with the command line itself (a flag, a path): reported as one line."""


# ------------------------------------------------------------------------------------------ checks


def _check_input_file(path: str, flag: str) -> None:
    if not path:
        raise UsageError(f"{flag}: an empty path")
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a directory, not a file")
    if not os.path.exists(path):
        raise UsageError(f"{flag} {path}: no such file")


def _nearest_existing(path: str) -> str:
    """``path`` itself or its nearest ancestor that exists."""
    current = os.path.abspath(path)
    while not os.path.exists(current):
        current = os.path.dirname(current)
    return current


def _check_writable_dir(directory: str, flag: str, path: str) -> None:
    try:  # as root, os.access says yes to a read-only filesystem: try it (an unnamed file, gone on close)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot write in {directory} ({err.strerror})") from None


def _check_output_file(path: str | None, flag: str) -> None:
    """A file the command will write: not a directory, in an existing, writable directory."""
    if path is None:
        return
    if not path:
        raise UsageError(f"{flag}: an empty path; give a file path")
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a directory; give a file path")
    parent = os.path.dirname(os.path.abspath(path))
    existing = _nearest_existing(parent)
    if not os.path.isdir(existing):
        raise UsageError(f"{flag} {path}: {existing} is a file, not a directory")
    if existing != parent:
        raise UsageError(f"{flag} {path}: directory {os.path.dirname(path)} does not exist")
    _check_writable_dir(parent, flag, path)


def _check_output_dir(path: str | None, flag: str) -> None:
    """A directory the command will create if needed and write in."""
    if path is None:
        return
    if not path:
        raise UsageError(f"{flag}: an empty path; give a directory")
    existing = _nearest_existing(path)
    if not os.path.isdir(existing):
        what = "is a file" if existing == os.path.abspath(path) else f"is under {existing}, a file"
        raise UsageError(f"{flag} {path}: {what}, not a directory")
    _check_writable_dir(existing, flag, path)


def _check_counts(args: argparse.Namespace, minimums: dict[str, int]) -> None:
    """Each integer flag ``name`` (when given) is at least its minimum: refused by flag before any work."""
    for name, minimum in minimums.items():
        value = getattr(args, name)
        if isinstance(value, int) and value < minimum:  # "auto" (--num-samples) is checked by the search
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be >= {minimum}")


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX
        return None


def _check_fits(nbytes: float, what: str) -> None:
    """Refuse up front when ``nbytes``, a lower bound on what the command would allocate, exceeds the
    machine's physical memory (rather than failing in an allocation after minutes of work)."""
    total = _physical_memory()
    if total is not None and nbytes > total:
        raise UsageError(
            f"{what} would need at least {nbytes / 2**30:.1f} GiB, more than this machine's "
            f"{total / 2**30:.1f} GiB of memory"
        )


def _check_device(text: str | None, flag: str = "--device") -> torch.device | None:
    if text is None:
        return None
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"{flag} {text}: not a device torch knows (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{flag} {text}: CUDA is not available on this machine")
    try:  # any other device type (mps, xpu, ...), or a CUDA index out of range
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:  # AssertionError: "Torch not compiled with ..." builds
        raise UsageError(f"{flag} {text}: not usable here ({_one_line(err)})") from None
    return device


def _check_extra(what: str, flag: str) -> None:
    module, extra = _NEEDS[what]
    try:
        importlib.import_module(module)
    except ImportError:
        raise UsageError(
            f"{flag} needs the optional '{module}' package: "
            f"python -m pip install torch==<your pin> 'boss_fast[{extra}]'"
        ) from None


def _load_schedule(path: str) -> bf.Schedule:
    _check_input_file(path, "--schedule")
    return bf.Schedule.load(path)


def _warn_if_other_model(sched: bf.Schedule, velocity: object) -> None:
    if sched.fingerprint is not None and isinstance(velocity, nn.Module):
        if bf.model_fingerprint(velocity) != sched.fingerprint:
            warnings.warn(
                "the schedule was searched on another model (its fingerprint differs)", stacklevel=2
            )


# ------------------------------------------------------------------------------------------ models


def _import_model(spec: str) -> object:
    module_name, _, attr = spec.partition(":")
    # Like `python -m`: a module in the current directory is importable (the console script's sys.path[0]
    # is its own bin/ directory, not the working directory).
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise UsageError(f"--model {spec}: cannot import {module_name}: {_one_line(err)}") from None
    except Exception as err:  # the user's module failed while running: where, in one line
        where = traceback.extract_tb(err.__traceback__)[-1]
        raise UsageError(
            f"--model {spec}: importing {module_name} raised {type(err).__name__}: {_one_line(err)} "
            f"({where.filename}:{where.lineno})"
        ) from None
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise UsageError(f"--model {spec}: {module_name} has no attribute {attr!r}") from None
    if not callable(obj):
        raise UsageError(f"--model {spec}: not callable as velocity(x, t)")
    _IMPORTED_MODELS[id(obj)] = (obj, spec)
    return obj


def _load_velocity(spec: str) -> tuple[object, tuple[int, ...] | None]:
    """A bundled model by name, or any importable velocity callable as ``module:attr``."""
    if ":" in spec:
        return _import_model(spec), None
    if spec not in BUNDLED_SHAPES:
        raise UsageError(
            f"--model {spec}: unknown model; use a bundled one ({', '.join(BUNDLED_SHAPES)}) or module:attr"
        )
    return load_bundled(spec), BUNDLED_SHAPES[spec]


def _shape(text: str | None, *defaults: tuple[int, ...] | None) -> tuple[int, ...]:
    if text is None:
        for default in defaults:
            if default is not None:
                return tuple(default)
        raise UsageError(
            "--shape is required here (e.g. --shape 3,32,32): neither model nor schedule knows it"
        )
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise UsageError(f"--shape {text}: must be comma-separated integers (e.g. 3,32,32)") from None
    if any(s < 1 for s in shape):
        raise UsageError(f"--shape {text}: every entry must be >= 1")
    return shape


def _probe(velocity: object, spec: str, shape: tuple[int, ...], device: torch.device | None) -> None:
    """One call on one sample, so a model that does not fit ``shape`` fails now, in one line."""
    if ":" not in spec:
        return  # a bundled model: its shape is known to fit
    param = next((p for p in getattr(velocity, "parameters", list)() if p.is_floating_point()), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    device = device or (param.device if param is not None else torch.device("cpu"))
    x = torch.zeros(1, *shape, dtype=dtype, device=device)
    try:
        with torch.no_grad():
            out = velocity(x, torch.zeros(1, dtype=dtype, device=device))
    except Exception as err:  # the user's model on the user's --shape
        raise UsageError(
            f"--model {spec} fails on one sample of shape {shape}: {type(err).__name__}: {_one_line(err)}"
        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(x.shape):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(f"--model {spec} returns {got} for x of shape {tuple(x.shape)}; it must match x")


# ------------------------------------------------------------------------------------------ commands


def _cmd_demo(args) -> None:
    _check_output_dir(args.out, "--out")
    _check_counts(args, {"grid": 2, "max_nfe": 1, "num_samples": 1, "eval_samples": 2, "seed": 0})
    _check_counts(args, {"straighten_iters": 1})
    run_demo(
        DemoConfig(
            out=args.out,
            models=tuple(m for m in args.models.split(",") if m),
            oracle=args.oracle,
            search=_demo_search(args),
            max_nfe=args.max_nfe,
            eval_samples=args.eval_samples,
            progress=not args.no_progress,
            straighten=demo_straighten_settings(args.straighten_iters, args.grid, args.seed)
            if args.straighten
            else None,
        )
    )
    with open(os.path.join(args.out, "results.md")) as f:
        print(f.read())
    print(f"report written to {args.out}/")


def _demo_search(args: argparse.Namespace) -> bf.SearchSettings | None:
    """The demo's search settings from --grid, --num-samples, --seed (None: each model's measured ones)."""
    given = {name: getattr(args, name) for name in ("grid", "num_samples", "seed")}
    if all(value is None for value in given.values()):
        return None
    if args.num_samples is None:
        flag = "--grid" if args.grid is not None else "--seed"
        raise UsageError(
            f"{flag} sets every model's search: give --num-samples too (without --grid, --num-samples and "
            "--seed each model uses its measured number of noises, digits_dit 128, gmm2d_narrow 256)"
        )
    grid = 100 if args.grid is None else args.grid
    seed = 0 if args.seed is None else args.seed
    n = args.num_samples
    return bf.SearchSettings(grid=grid, num_samples=n, batch_size=n, seed=seed)  # one batch: the demo's rule


def _int_or(word: str) -> Callable[[str], int | str]:
    """An option's type: an integer or ``word`` ("auto" for --num-samples, "grid" for --pair-steps); the
    library checks the value."""

    def parse(text: str) -> int | str:
        if text == word:
            return text
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer or {word!r}, got {text!r}") from None

    return parse


def _add_search_cost_args(sched: argparse.ArgumentParser) -> None:
    """--num-samples (an integer or auto), --max-samples, --dp of the schedule subcommand."""
    sched.add_argument(
        "--num-samples",
        type=_int_or("auto"),
        default=256,
        help="noises, or 'auto': rounds of 32, 64, ... until no knot moves by more than 2 grid points",
    )
    sched.add_argument("--max-samples", type=int, default=None, help="the cap of --num-samples auto (1024)")
    sched.add_argument(
        "--dp",
        default=None,
        choices=("full", "coarse"),
        help="global objective's DP: full, or coarse (a coarse pass, then windows: ~3x fewer evaluations); "
        "default: coarse for --objective global",
    )
    sched.add_argument(
        "--store",
        default="device",
        choices=STORES,
        help="where the global search keeps its per-sample rows: device, host memory, or a memory-mapped "
        "file (docs/search_memory.md); the schedule does not depend on it",
    )
    sched.add_argument(
        "--autocast",
        choices=("bfloat16", "float16"),
        help="every model call of the search under torch.autocast in this dtype (states stay float32)",
    )
    sched.add_argument(
        "--dry-run",
        action="store_true",
        help="print the bill (model evaluations, memory by store, projected time from one timed call) "
        "and exit without searching",
    )


# The flags of `schedule` that are fields of SearchSettings (the rest of its flags are handles: --device,
# --checkpoint, --no-progress).
_SEARCH_FLAGS = (
    "grid",
    "num_samples",
    "max_samples",
    "dp",
    "store",
    "batch_size",
    "seed",
    "solver",
    "metric",
)
_SEARCH_FLAGS += ("backend", "objective", "start", "polish")


def _search_settings(args: argparse.Namespace, start: str | None = None) -> bf.SearchSettings:
    """The one place `schedule` (with --model and with --pipeline alike) builds its ``SearchSettings``; a bad
    value is one line naming the flag of the field the library names first. ``start``: the rule when --start
    is not given (None: the library's default)."""
    fields = {name: getattr(args, name) for name in _SEARCH_FLAGS}
    if fields["start"] is None:
        fields["start"] = start
    fields["autocast"] = _DTYPES.get(args.autocast)
    try:
        return bf.SearchSettings(**fields)
    except (TypeError, ValueError) as err:
        text = _one_line(err)
        names = (*_SEARCH_FLAGS, "autocast")
        named = [(m.start(), name) for name in names if (m := re.search(rf"\b{name}\b", text))]
        flag = "--" + min(named)[1].replace("_", "-") if named else "schedule"
        raise UsageError(f"{flag}: {text}") from None


def _search_handles(args: argparse.Namespace, device: torch.device | None) -> dict[str, object]:
    """``optimal_schedules``' operational arguments from the flags."""
    return {"device": device, "progress": not args.no_progress, "checkpoint": args.checkpoint}


def _check_out(args: argparse.Namespace) -> None:
    """--out: required, except with --dry-run (which writes nothing)."""
    if args.out is None and not args.dry_run:
        raise UsageError("--out is required (the schedule JSON to write), except with --dry-run")
    _check_output_file(args.out, "--out")


def _print_bill(velocity: object, shape, budget: int, settings, args, device) -> None:
    """--dry-run: the search's bill (``search_bill``), one item a line; no search."""
    bill = bf.search_bill(velocity, shape, budget, settings, device=device, checkpoint=args.checkpoint)
    print(f"bill of the search ({budget} steps at most, shape {tuple(shape)}); nothing searched:")
    for line in bill.lines():
        print(f"  {line}")


def _cmd_schedule(args) -> None:
    if args.pipeline is not None:
        _cmd_schedule_pipeline(args)
        return
    given = [flag for flag, value in _pipeline_only(args) if value is not None]
    if given:
        raise UsageError(f"{given[0]} applies to --pipeline only")
    _check_out(args)
    _check_output_file(args.checkpoint, "--checkpoint")
    _check_counts(args, {"steps": 1, "max_steps": 1, "grid": 1, "num_samples": 1, "batch_size": 1, "seed": 0})
    settings = _search_settings(args)
    device = _check_device(args.device)
    if args.solver == "dopri5":
        _check_extra("dopri5", "--solver dopri5")
    velocity, default_shape = _load_velocity(args.model)
    shape = _shape(args.shape, default_shape)
    # Lower bounds: one batch of N recorded float32 teacher states, and for the local objective the (N, N)
    # float64 cost sums (100001^2 of them: 74.5 GiB).
    n = args.grid + 1
    batch = args.batch_size if args.num_samples == "auto" else min(args.batch_size, args.num_samples)
    sums = 8.0 * n * n if args.objective == "local" else 0.0
    _check_fits(sums + 4.0 * n * batch * float(np.prod(shape)), f"--grid {args.grid} (batch {batch})")
    _probe(velocity, args.model, shape, device)
    budget = args.max_steps if args.max_steps is not None else args.steps
    if args.dry_run:
        _print_bill(velocity, shape, budget, settings, args, device)
        return
    sset = bf.optimal_schedules(velocity, shape, budget, settings, **_search_handles(args, device))
    found = sset if args.max_steps is not None else sset[args.steps]  # one budget: the same search read at K
    found.save(args.out)
    for sched in sset.values() if args.max_steps is not None else [found]:
        times = np.array2string(sched.times, precision=4)
        what = f"cost {sched.cost:.6g}, start {sched.start}"
        print(f"{sched.steps}-step {sched.objective} schedule ({what}): {times}")
    print(f"written to {args.out}")


# ------------------------------------------------------------------------------ schedule --pipeline

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _pipeline_only(args) -> list[tuple[str, object]]:
    flags = ("prompts", "embeddings", "guidance", "height", "width", "dtype", "max_sequence_length")
    return [("--" + name.replace("_", "-"), getattr(args, name)) for name in flags]


def _pipelines_module():
    """boss_fast.integrations.pipelines, or a one-line error naming the extra when diffusers is missing."""
    try:
        return importlib.import_module("boss_fast.integrations.pipelines")
    except ImportError as err:
        raise UsageError(f"--pipeline: {_one_line(err)}") from None


def _pipeline_flags(args, pipelines) -> None:
    """What ``--pipeline`` can check before loading anything: one of --prompts/--embeddings, an existing
    file, a guidance scale in the range the pipelines take."""
    if (args.prompts is None) == (args.embeddings is None):
        raise UsageError("--pipeline needs one of --prompts FILE (one prompt a line) or --embeddings FILE")
    if args.prompts is not None:
        _check_input_file(args.prompts, "--prompts")
    else:
        _check_input_file(args.embeddings, "--embeddings")
    if args.guidance is not None:
        try:
            pipelines.check_guidance(args.guidance, "--guidance")
        except ValueError as err:
            raise UsageError(_one_line(err)) from None


def _pipeline_size(args, pipelines, pipe) -> None:
    """--height/--width against the loaded pipeline's latent factor, before any prompt is encoded."""
    try:
        pipelines.latent_shape(pipe, args.height, args.width)
    except ValueError as err:
        text = _one_line(err)
        raise UsageError(f"--{text}" if text.startswith(("height", "width")) else text) from None


def _pipeline_conditioning(args, pipelines, pipe) -> dict:
    flag = "--prompts" if args.prompts is not None else "--embeddings"
    try:
        if args.prompts is None:
            return pipelines.read_embeddings(args.embeddings)
        prompts = pipelines.read_prompts(args.prompts)
    except ValueError as err:  # the message starts with the file's name
        raise UsageError(f"{flag} {_one_line(err)}") from None
    length = args.max_sequence_length
    return pipelines.encode_prompts(pipe, prompts, args.guidance, max_sequence_length=length)


def _cmd_schedule_pipeline(args) -> None:
    """``boss-fast schedule --pipeline``: the prompt bank's schedule(s) of an SD3 or Flux pipeline."""
    if args.shape is not None:
        raise UsageError("--shape: with --pipeline the latent shape follows from --height and --width")
    _check_out(args)
    _check_output_file(args.checkpoint, "--checkpoint")
    settings = _search_settings(args, start=DIFFUSERS_START)  # a pipeline starts from the unscaled noise
    device = _check_device(args.device)
    if args.solver == "dopri5":
        _check_extra("dopri5", "--solver dopri5")
    pipelines = _pipelines_module()
    _pipeline_flags(args, pipelines)
    pipe = pipelines.load_pipeline(args.pipeline, _DTYPES.get(args.dtype), device)
    _pipeline_size(args, pipelines, pipe)
    cond = _pipeline_conditioning(args, pipelines, pipe)
    target = pipelines.pipeline_target(pipe, cond, args.guidance, args.height, args.width)
    budget = args.max_steps if args.max_steps is not None else args.steps
    if args.dry_run:
        _print_bill(target.velocity, target.shape, budget, settings, args, device)
        return
    sset = pipelines.pipeline_schedules(target, budget, settings, **_search_handles(args, device))
    found = sset if args.max_steps is not None else sset[args.steps]
    found.save(args.out)
    bank = target.velocity.bank_size
    mu = "" if target.mu is None else f", mu {target.mu:.6g}"
    print(f"{target.kind} pipeline, latent {target.shape}{mu}, {bank} prompt(s), guidance {target.guidance}")
    for sched in sset.values() if args.max_steps is not None else [found]:
        print(f"K = {sched.steps}:")
        print(f"  diffusers: {_diffusers_line(sched, pipe.scheduler.config, target.mu)}")
        print(f"  comfyui:   {_comfyui_line(sched)}")
    print(f"written to {args.out}")


def _comfyui_line(sched: bf.Schedule) -> str:
    """The sigmas as ComfyUI's sigma text, or why ComfyUI cannot sample the schedule (its start rule)."""
    try:
        check_comfyui_start(sched)
    except ValueError as err:
        return f"({_one_line(err)})"
    return comfyui_text(sched.sigmas())


def _diffusers_line(sched: bf.Schedule, config, mu: float | None) -> str:
    """``num_inference_steps=K, sigmas=[...]`` for the pipeline's own scheduler, or why not."""
    try:
        check_diffusers_start(sched)
    except ValueError as err:  # no scheduler can: the swap below would refuse it too
        return f"({_one_line(err)})"
    dynamic = bool(config.get("use_dynamic_shifting", False))
    try:
        values = diffusers_sigmas(sched, mu=mu if dynamic else None, config=config)
    except ValueError as err:
        swap = "pipe.scheduler = BossScheduler.from_schedule(sched, pipe.scheduler.config)"
        return f"({_one_line(err)}) -> {swap}"
    return f"num_inference_steps={sched.steps}, sigmas=[{', '.join(repr(v) for v in values)}]"


def _sigmas_schedule(path: str, steps: int | None) -> bf.Schedule:
    """The schedule ``boss-fast sigmas`` prints: ``path`` holds one Schedule or a ScheduleSet; K steps by
    ``schedule_for_steps``, the rule the ComfyUI node shares (a K beyond a set's budgets re-solved on its
    cost table)."""
    _check_input_file(path, "PATH")
    source = read_schedule_file(path)
    if steps is None:
        if isinstance(source, bf.Schedule):
            return source
        top = max_budget(source)
        more = f"; up to {top} re-solved on its cost table" if top > source.max_steps else ""
        raise UsageError(f"{path} holds a schedule set (K = 1..{source.max_steps}{more}): give --steps K")
    return schedule_for_steps(source, steps, path, "--steps")


def _scheduler_config(path: str | None) -> dict | None:
    if path is None:
        return None
    _check_input_file(path, "--config")
    config = read_json(path, "scheduler config")
    if not isinstance(config, dict):
        raise UsageError(f"--config {path}: not a scheduler config (a JSON object)")
    return config


def _cmd_sigmas(args) -> None:
    _check_counts(args, {"steps": 1})
    if args.format != "diffusers" and (args.config, args.shift, args.mu) != (None, None, None):
        raise UsageError("--config, --shift and --mu apply to --format diffusers only")
    config = _scheduler_config(args.config)
    sched = _sigmas_schedule(args.path, args.steps)
    sigmas = sched.sigmas().tolist()
    if args.format == "diffusers":  # K values: the stock scheduler appends its own terminal 0
        values = diffusers_sigmas(sched, args.shift, args.mu, config=config)
        print("[" + ", ".join(repr(v) for v in values) + "]")
    elif args.format == "comfyui":  # SIGMAS: 1 - times, descending, ending in 0; plain float32 decimals
        check_comfyui_start(sched)  # ComfyUI starts from sigmas[0] * noise: refused for another rule
        print(comfyui_text(sigmas))
    elif args.format == "json":
        doc = {"steps": sched.steps, "sigmas": sigmas, "times": sched.times.tolist(), "start": sched.start}
        print(json.dumps(doc))
    elif args.format == "csv":
        print("step,time,sigma")
        for i, (t, sg) in enumerate(zip(sched.times.tolist(), sigmas, strict=True)):
            print(f"{i},{t!r},{sg!r}")
    else:
        print("\n".join(repr(v) for v in sigmas))


def _straighten_settings(args: argparse.Namespace, grid: object, **fixed: object) -> StraightenSettings:
    """The one place ``boss-fast straighten`` (and ``--pipeline``) turns its options into the settings; a bad
    value is refused naming its option (``StraightenSettings.lr`` -> ``--lr``). ``fixed``: what the command
    sets itself (the schedule's solver, the LoRA rank)."""
    memory = StraightenMemory(
        gradient_checkpointing=args.gradient_checkpointing, autocast=_DTYPES.get(args.autocast)
    )
    # Options left out take the settings' defaults (num_pairs; lr by full or LoRA training).
    optional = ("num_pairs", "lr", "pair_spacing", "inputs")
    given = {k: getattr(args, k) for k in optional if getattr(args, k) is not None}
    # --pair-steps grid / --pair-solver schedule: the schedule's own teacher (None in the settings)
    given.update({k: None if v in ("grid", "schedule") else v
                  for k in ("pair_steps", "pair_solver") if (v := getattr(args, k)) is not None})  # fmt: skip
    try:
        return StraightenSettings(
            grid=grid, iters=args.iters, batch_size=args.batch_size, warmup=args.warmup, ema=args.ema,
            lora_rank=args.lora_rank, loss=args.loss, normalize=args.normalize, seed=args.seed,
            memory=memory, **given, **fixed,
        )  # fmt: skip
    except (TypeError, ValueError) as err:
        option = re.search(r"StraightenSettings\.(\w+)", str(err))
        if option is None:
            raise
        flag = "--" + option.group(1).replace("_", "-")
        raise UsageError(_one_line(str(err).replace(option.group(0), flag))) from None


def _cmd_straighten_pipeline(args) -> None:
    """``boss-fast straighten --pipeline``: LoRA on an SD3 or Flux pipeline's transformer over the prompt
    bank, written as a folder that ``pipe.load_lora_weights`` and ``BossScheduler.from_pretrained`` read."""
    for flag, value in (("--shape", args.shape), ("--grid", args.grid)):
        if value is not None:
            raise UsageError(f"{flag}: with --pipeline it follows from the schedule and --height/--width")
    if args.lora_rank is None:
        raise UsageError("--pipeline writes a LoRA for diffusers: give --lora-rank r")
    _check_extra("lora", "--lora-rank")
    for flag, path in (("--out", args.out), ("--checkpoint-dir", args.checkpoint_dir),
                       ("--cache-dir", args.cache_dir)):  # fmt: skip
        _check_output_dir(path, flag)
    device = _check_device(args.device)
    _check_input_file(args.schedule, "--schedule")
    sched = _sigmas_schedule(args.schedule, args.steps)
    settings = _straighten_settings(args, sched.grid, solver=sched.solver)
    pipelines = _pipelines_module()
    _pipeline_flags(args, pipelines)
    lora = importlib.import_module("boss_fast.integrations.diffusers_lora")
    pipe = pipelines.load_pipeline(args.pipeline, _DTYPES.get(args.dtype), device)
    _pipeline_size(args, pipelines, pipe)
    cond = _pipeline_conditioning(args, pipelines, pipe)
    stats = lora.straighten_pipeline(
        pipe, sched, cond, args.out, settings, guidance=args.guidance, height=args.height, width=args.width,
        checkpoint_dir=args.checkpoint_dir, device=device, progress=not args.no_progress,
        cache_dir=args.cache_dir,
    )  # fmt: skip
    print(
        f"straightened for {sched.steps} steps (LoRA rank {args.lora_rank}, {stats.trained_share:.1%} of the "
        f"transformer's parameters, last loss {stats.losses[-1]:.4g}); written to {args.out}: "
        f"pipe.load_lora_weights({args.out!r}); pipe.scheduler = BossScheduler.from_pretrained({args.out!r}, "
        f'subfolder="scheduler"); pipe(..., num_inference_steps={sched.steps})'
    )


def _cmd_straighten(args) -> None:
    if args.pipeline is not None:
        _cmd_straighten_pipeline(args)
        return
    given = [flag for flag, value in [*_pipeline_only(args), ("--steps", args.steps)] if value is not None]
    if given:
        raise UsageError(f"{given[0]} applies to --pipeline only")
    _check_output_file(args.out, "--out")
    _check_counts(args, {"num_pairs": 1, "iters": 1, "batch_size": 1, "warmup": 0, "seed": 0})
    _check_counts(args, {"grid": 1, "lora_rank": 1, "pair_steps": 1})
    _check_output_dir(args.checkpoint_dir, "--checkpoint-dir")
    _check_output_dir(args.cache_dir, "--cache-dir")
    device = _check_device(args.device)
    if args.lora_rank is not None:
        _check_extra("lora", "--lora-rank")
    sched = _load_schedule(args.schedule)
    if sched.solver == "dopri5":
        _check_extra("dopri5", f"--schedule {args.schedule} (a dopri5 teacher's)")
    settings = _straighten_settings(args, sched.grid if args.grid is None else args.grid, solver=sched.solver)
    velocity, default_shape = _load_velocity(args.model)
    if not isinstance(velocity, nn.Module) or not any(p.is_floating_point() for p in velocity.parameters()):
        raise UsageError(f"--model {args.model}: has no trainable weights to straighten")
    shape = _shape(args.shape, sched.shape, default_shape)
    _probe(velocity, args.model, shape, device)
    student, stats = bf.straighten(
        velocity, sched, settings=settings, shape=shape, device=device, progress=not args.no_progress,
        checkpoint_dir=args.checkpoint_dir, cache_dir=args.cache_dir, return_stats=True,
    )  # fmt: skip
    config = student.config() if callable(getattr(student, "config", None)) else {}
    name = args.model if ":" not in args.model else args.model.replace(":", ".")
    meta = {"straightened_for": list(sched.times), "start": sched.start}  # where its first step starts
    meta.update(iters=stats.steps, loss=args.loss)
    save_weights(student, args.out, name=name, config=config, metadata=meta)
    print(
        f"straightened for {sched.steps} steps ({stats.trained_share:.1%} of the parameters trained, "
        f"last loss {stats.losses[-1]:.4g}); weights written to {args.out}"
    )


def _cmd_sample(args) -> None:
    _check_output_file(args.out, "--out")
    _check_output_file(args.png, "--png")
    _check_counts(args, {"num": 1, "seed": 0})
    if args.mode == "cuda_graph" and not torch.cuda.is_available():
        raise UsageError("--mode cuda_graph: needs CUDA, which is not available on this machine")
    device = _check_device(args.device) or (torch.device("cuda") if args.mode == "cuda_graph" else None)
    sched = _load_schedule(args.schedule)
    if args.weights is not None:
        _check_input_file(args.weights, "--weights")
        if args.model not in BUNDLED_SHAPES:
            raise UsageError("--weights loads a bundled model's architecture (e.g. --model digits_dit)")
        velocity, default_shape = load_bundled(args.model, weights=args.weights), BUNDLED_SHAPES[args.model]
    else:
        velocity, default_shape = _load_velocity(args.model)
        _warn_if_other_model(sched, velocity)  # a straightened student differs from its schedule's teacher
    shape = _shape(args.shape, sched.shape, default_shape)
    # The noise, the sampler's state and the result: three float32 copies of the samples at least.
    _check_fits(3 * 4.0 * args.num * float(np.prod(shape)), f"--num {args.num} samples of shape {shape}")
    if args.png and len(shape) != 3:
        raise UsageError(f"--png needs image samples (C, H, W); these have shape {shape}")
    _probe(velocity, args.model, shape, device)
    noise = bf.seeded_noise(shape, 0, args.num, seed=args.seed)
    if device is not None and isinstance(velocity, nn.Module):
        velocity = velocity.to(device)
    sampler = bf.Sampler(velocity, sched, mode=args.mode, device=device)
    x = sampler(noise.to(sampler.device, sampler.dtype)).cpu()
    atomic_write(args.out, lambda f: np.save(f, x.numpy()))
    print(f"{args.num} samples after {sched.steps} steps written to {args.out} (shape {tuple(x.shape)})")
    if args.png:
        save_sample_grid({f"{sched.steps} steps": x[:16, :1].numpy()}, args.png)
        print(f"grid written to {args.png}")


def _cmd_dp_example(args) -> None:
    _check_counts(args, {"grid": 1, "max_steps": 1})
    if args.max_steps > args.grid:
        raise UsageError(f"--max-steps {args.max_steps}: at most --grid ({args.grid}) steps on this grid")
    n = args.grid + 1
    # The example holds two (N, N) float64 matrices at once (the outer difference and its square; then the
    # square and its upper triangle).
    _check_fits(2 * 8.0 * n * n, f"--grid {args.grid}: the example's {n} x {n} cost matrices")
    t = np.linspace(0.0, 1.0, n)
    # A cost with BOSS's typical shape: jumps are cheap in the middle of the trajectory, dear at both ends.
    curvature = 1.0 / (t * (1 - t) + 0.02)
    density = np.cumsum(np.r_[0.0, 0.5 * (curvature[1:] + curvature[:-1]) * np.diff(t)])
    cost = np.triu(np.subtract.outer(density, density) ** 2, 1)
    for p in bf.bellman_paths(cost, args.max_steps):
        print(f"{p.steps:3d} steps  cost {p.cost:10.4g}  times {np.array2string(t[p.indices], precision=3)}")


# ------------------------------------------------------------------------------------------ parser

_MODEL_HELP = (
    f"bundled ({', '.join(BUNDLED_SHAPES)}) or module:attr, a velocity(x, t) callable; module:attr IMPORTS "
    "(runs) that module, found as `python -m` would (the current directory first)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="boss-fast",
        description=__doc__.splitlines()[0],
        epilog="Errors are one line on stderr (exit 2; Ctrl-C: 130). --model module:attr runs that module's "
        "code: use only modules you trust.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="the main job: Bellman vs uniform/shifted/EDM on the bundled digits DiT"
    )
    demo.add_argument("--out", default="report", help="report folder (default: report)")
    demo.add_argument(
        "--models", default="digits_dit,gmm2d_narrow", help="bundled models to judge, comma-separated"
    )
    demo.add_argument("--oracle", action="store_true", help="add coordinate-descent oracle rows (slower)")
    demo.add_argument("--grid", type=int, default=None, help="the searches' uniform grid (default 100)")
    demo.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="noises for the schedule searches (default: digits_dit 128, gmm2d_narrow 256); required with "
        "--grid or --seed",
    )
    demo.add_argument("--max-nfe", type=int, default=10)
    demo.add_argument("--eval-samples", type=int, default=1000)
    demo.add_argument("--seed", type=int, default=None, help="of the search noises (default 0)")
    demo.add_argument("--no-progress", action="store_true")
    demo.add_argument(
        "--straighten",
        action="store_true",
        help="add straightened rows (local and global steps, NFE 2 and 4)",
    )
    demo.add_argument("--straighten-iters", type=int, default=800)
    demo.set_defaults(func=_cmd_demo)

    _add_schedule_parser(sub)
    _add_sigmas_parser(sub)
    _add_straighten_parser(sub)
    _add_sample_parser(sub)

    ex = sub.add_parser("dp-example", help="solve the DP on an example cost matrix and print every schedule")
    ex.add_argument("--grid", type=int, default=100)
    ex.add_argument("--max-steps", type=int, default=10)
    ex.set_defaults(func=_cmd_dp_example)
    return parser


def _add_schedule_parser(sub) -> None:
    sched = sub.add_parser("schedule", help="the Bellman-optimal schedule of a velocity model, as JSON")
    _add_schedule_source(sched)
    sched.add_argument("--shape", help="one sample's shape, e.g. 3,32,32 (bundled models know theirs)")
    budget = sched.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int, help="K: write one schedule")
    budget.add_argument(
        "--max-steps", type=int, help="write a schedule set: every K = 1..max from one search"
    )
    sched.add_argument("--grid", type=int, default=100)
    _add_search_cost_args(sched)
    sched.add_argument("--batch-size", type=int, default=256)
    sched.add_argument("--seed", type=int, default=0)
    sched.add_argument(
        "--objective",
        default="global",
        choices=("global", "local"),
        help="global: the error at t = 1 (own-state DP); local: published BOSS (sum of one-step errors)",
    )
    sched.add_argument(
        "--solver",
        default=None,
        choices=("euler", "heun", "rk4", "dopri5"),
        help="teacher (default: heun for --objective global, euler for local)",
    )
    sched.add_argument("--metric", default="l2sq", choices=("l2sq", "l2"))
    sched.add_argument(
        "--start",
        default=None,
        choices=START_RULES,
        help="where sampling starts: zero (pinned at t = 0, BOSS as published), noise (the search picks the "
        "first time, the noise itself is the state there: diffusers) or scaled ((1 - t) * noise there: "
        "ComfyUI). Default: the library's for --model, noise for --pipeline. Recorded in the file; every "
        "consumer honours it or refuses it",
    )
    sched.add_argument(
        "--polish",
        default=None,
        choices=POLISHES,
        help="after the global DP, move knots while the search noises' endpoint error falls: start (the "
        "start knot), all, or none. Default: start with a free start, none otherwise",
    )
    sched.add_argument("--device", default=None)
    sched.add_argument("--backend", default="auto", choices=("auto", "cpp", "numba", "numpy"))
    sched.add_argument("--checkpoint", default=None, help="resumable partial cost sums (.npz)")
    sched.add_argument("--no-progress", action="store_true")
    sched.add_argument("--out", help="schedule JSON to write (required, except with --dry-run)")
    sched.set_defaults(func=_cmd_schedule)


def _add_schedule_source(sched) -> None:
    """``schedule``'s model: ``--model`` or ``--pipeline`` (with the pipeline's options)."""
    source = sched.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help=_MODEL_HELP)
    source.add_argument(
        "--pipeline",
        help="a diffusers SD3 or Flux pipeline folder or hub id (its own from_pretrained; runs no user code)",
    )
    _add_pipeline_options(sched)


def _add_pipeline_options(sched) -> None:
    """The options of ``schedule --pipeline``: the conditioning bank, guidance, resolution, dtype."""
    sched.add_argument("--prompts", help="--pipeline: a text file, one prompt a line (the bank, m mod P)")
    sched.add_argument(
        "--embeddings",
        help="--pipeline: a safetensors file of prompt_embeds, pooled_prompt_embeds (P rows) and, for CFG, "
        "negative_prompt_embeds, negative_pooled_prompt_embeds",
    )
    sched.add_argument(
        "--guidance",
        type=float,
        help="--pipeline: the guidance scale the pipeline runs (default SD3 7, Flux 3.5)",
    )
    sched.add_argument(
        "--height", type=int, help="--pipeline: image height in pixels (default the pipeline's)"
    )
    sched.add_argument("--width", type=int, help="--pipeline: image width in pixels (default the pipeline's)")
    sched.add_argument("--dtype", choices=tuple(_DTYPES), help="--pipeline: torch_dtype to load it in")
    sched.add_argument(
        "--max-sequence-length",
        type=int,
        help="--prompts: the T5 token length, as your pipeline call's (default SD3 256, Flux 512)",
    )


def _add_sigmas_parser(sub) -> None:
    sg = sub.add_parser(
        "sigmas",
        help="a schedule's sigmas (1 - t) for other tools: text, json, csv, comfyui, diffusers",
        description="Print a schedule's sigmas = 1 - times (K + 1 values, descending, ending in 0 for a "
        "schedule that ends at t = 1). --format diffusers prints the K values to pass as pipe(sigmas=...) "
        "to the stock FlowMatchEulerDiscreteScheduler: the inverse of its shift (or mu), so that after "
        "its own shift it steps at the schedule. The schedule's start rule travels with it: diffusers "
        "starts from the unscaled noise at the first sigma (rules zero, noise), ComfyUI from "
        "sigmas[0] * noise (rule scaled); a format whose tool starts otherwise refuses the schedule by its "
        "rule.",
    )
    sg.add_argument("path", metavar="PATH", help="a schedule JSON, or a schedule set JSON (then --steps)")
    sg.add_argument("--steps", type=int, default=None, help="K: required for a set; checked for a schedule")
    sg.add_argument(
        "--format",
        default="text",
        choices=("text", "json", "csv", "comfyui", "diffusers"),
        help="text: one sigma per line; json: {steps, sigmas, times, start}; csv: step,time,sigma; comfyui: "
        "one ', '-separated line of plain float32 decimals (ComfyUI's ManualSigmas text); diffusers: the K "
        "values for sigmas= (a Python/JSON list)",
    )
    sg.add_argument("--config", default=None, help="diffusers: the scheduler_config.json to invert")
    sg.add_argument("--shift", type=float, default=None, help="diffusers: the static shift (or --config)")
    sg.add_argument("--mu", type=float, default=None, help="diffusers: the dynamic shift a pipeline passes")
    sg.set_defaults(func=_cmd_sigmas)


def _add_straighten_parser(sub) -> None:
    st = sub.add_parser("straighten", help="fine-tune a model for a schedule's steps (BOSS stage 2)")
    source = st.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help=_MODEL_HELP)
    source.add_argument(
        "--pipeline",
        help="a diffusers SD3 or Flux pipeline folder or hub id: LoRA on its transformer (--lora-rank), "
        "--out a folder for pipe.load_lora_weights",
    )
    _add_pipeline_options(st)
    st.add_argument("--schedule", required=True, help="schedule JSON (boss-fast schedule)")
    st.add_argument("--steps", type=int, help="--pipeline: K, when --schedule holds a schedule set")
    st.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute block activations (less memory)"
    )
    st.add_argument("--autocast", choices=("bfloat16", "float16"), help="the training forward in this dtype")
    st.add_argument("--shape", help="one sample's shape, e.g. 3,32,32 (default: the schedule's)")
    st.add_argument(
        "--grid", type=int, default=None, help="uniform grid size to check (default: the schedule's)"
    )
    st.add_argument("--num-pairs", type=int, default=None, help="pair noises (default: StraightenSettings')")
    st.add_argument(
        "--pair-steps", type=_int_or("grid"), default=None,
        help=f"the pairs' teacher steps, or grid: the schedule's grid (default {PAIR_STEPS})",
    )  # fmt: skip
    st.add_argument(
        "--pair-solver", choices=(*SOLVERS, "schedule"), default=None,
        help=f"the pairs' teacher solver, or schedule: the schedule's (default {PAIR_SOLVER})",
    )  # fmt: skip
    st.add_argument(
        "--pair-spacing", choices=PAIR_SPACINGS, default=None,
        help="how --pair-steps are cut (default: adaptive where it applies)",
    )  # fmt: skip
    st.add_argument("--iters", type=int, default=2000)
    st.add_argument("--batch-size", type=int, default=64)
    st.add_argument(
        "--lr", type=float, default=None, help="default: 2e-4 full, StraightenSettings' LoRA rate with LoRA"
    )
    st.add_argument("--warmup", type=int, default=200)
    st.add_argument("--ema", type=float, default=0.999)
    st.add_argument("--lora-rank", type=int, default=None, help="LoRA adapters only (needs peft)")
    st.add_argument("--loss", default="l2", choices=("l2", "pseudo_huber"))
    st.add_argument("--normalize", action="store_true", help="Simple ReFlow's 1/stopgrad(loss) weighting")
    st.add_argument(
        "--inputs", choices=INPUTS, default=None,
        help="each step trains from the sampler's own state (sampler) or the teacher's (teacher: BOSS); "
        "default: StraightenSettings'",
    )  # fmt: skip
    st.add_argument("--checkpoint-dir", default=None, help="resumable training state")
    st.add_argument("--cache-dir", default=None, help="reusable teacher pairs")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--device", default=None)
    st.add_argument("--no-progress", action="store_true")
    st.add_argument(
        "--out",
        required=True,
        help="straightened weights (.safetensors); with --pipeline a folder "
        "(pytorch_lora_weights.safetensors, scheduler/)",
    )
    st.set_defaults(func=_cmd_straighten)


def _add_sample_parser(sub) -> None:
    smp = sub.add_parser("sample", help="few-step samples with a schedule JSON")
    smp.add_argument("--model", required=True, help=_MODEL_HELP)
    smp.add_argument("--schedule", required=True)
    smp.add_argument("--shape", help="one sample's shape (default: the schedule's, else the model's)")
    smp.add_argument("--num", type=int, default=64)
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--out", required=True, help="samples (.npy)")
    smp.add_argument("--png", help="also write a grid of the first 16 (image models)")
    smp.add_argument("--weights", help="straightened weights of a bundled model (boss-fast straighten --out)")
    smp.add_argument(
        "--mode",
        default="eager",
        choices=("auto", "eager", "compile", "cuda_graph"),
        help="Sampler mode (default eager: the same bits as bf.sample; cuda_graph needs CUDA)",
    )
    smp.add_argument("--device", default=None, help="e.g. cuda (default: the model's device)")
    smp.set_defaults(func=_cmd_sample)


# ------------------------------------------------------------------------------------------ main


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _model_call(err: BaseException) -> str | None:
    """If ``err`` was raised inside a user's ``--model module:attr``: one line naming the model and the call
    (time, batch shape), read from the outermost frame of the traceback that runs the model; else None."""
    tb = err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        local = frame.f_locals
        this = local.get("self")
        for obj, spec in _IMPORTED_MODELS.values():
            # The object itself, a copy of a module (straighten trains one), or a plain function's frame.
            same = this is obj or (isinstance(obj, nn.Module) and type(this) is type(obj))
            if same or getattr(obj, "__code__", None) is frame.f_code:
                return f"--model {spec} raised {type(err).__name__} {_call_of(frame)}: {_one_line(err)}"
        tb = tb.tb_next
    return None


def _call_of(frame) -> str:
    """'at t = .. on a batch of shape ..' from a model frame's (x, t) arguments, as far as they are known."""
    local = frame.f_locals
    args = local.get("args")
    if not (isinstance(args, tuple) and len(args) >= 2):
        names = [n for n in frame.f_code.co_varnames[: frame.f_code.co_argcount] if n != "self"]
        args = tuple(local.get(n) for n in names[:2])
    if len(args) < 2 or not all(isinstance(a, torch.Tensor) for a in args[:2]):
        return "(called with something other than (x, t) tensors)"
    x, t = args[:2]
    try:
        time_text = f"t = {float(t.reshape(-1)[0])!r}" if t.numel() else "t = (empty)"
    except Exception:  # a device in an error state cannot be read: name the shape only
        time_text = f"t of shape {tuple(t.shape)}"
    return f"at {time_text} on a batch of shape {tuple(x.shape)}"


def _interrupted(args) -> str:
    resume = getattr(args, "checkpoint_dir", None) or getattr(args, "checkpoint", None)
    note = f"; rerun the same command to resume from {resume}" if resume else ""
    return f"interrupted; no partial output was written{note}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prefix = f"boss-fast {args.command}"

    def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"{prefix}: warning: {_one_line(message)}", file=sys.stderr)

    _IMPORTED_MODELS.clear()
    debug = os.environ.get(DEBUG_ENV) == "1"
    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning
            args.func(args)
    except KeyboardInterrupt:
        print(f"{prefix}: {_interrupted(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `boss-fast dp-example | head -1`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own exit flush stays quiet
        return 0
    except Exception as err:
        message = _model_call(err)
        if message is None and not isinstance(err, (UsageError, *_USER_ERRORS)):
            raise  # a bug in boss_fast: keep the traceback
        if debug:
            traceback.print_exc()
        print(f"{prefix}: error: {message or _one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
