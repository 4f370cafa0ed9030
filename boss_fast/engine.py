"""The streaming engine under every pass over noise batches: written once, used by each search.

Its clients are small pieces over arrays: the local objective (``search``: per-batch cost sums, then the
Bellman DP), the global objective (``global_objective``: per-level sums, argmin, advance) and
straightening's pair cache (``straighten``). What they share lives here:

- ``Shard``: which noise batches this rank runs (rank r of W runs batches r, r + W, ...; a batch is
  ``batch_size`` consecutive noises, so the batches do not depend on the rank count), the global noise rows
  of each batch, and the float64 all-reduce of (sum, count) (:func:`boss_fast._runtime.all_reduce_sums`).
- ``Checkpoint``: one header (format, version, the run's identity, rank, world size) for every file a pass
  writes, the atomic rewrite, and the refusal by name of a file of another run.
- ``progress_bar``: tqdm on rank 0 only.
- ``RowStore``: where per-sample rows live between passes (``store="device" | "host" | "disk"``): on the
  search device; in host memory (pinned when the device is CUDA); or in memory-mapped files in a temporary
  folder (deleted on ``close``). With "host" and "disk" the device holds only the batch in flight, in one
  reused work buffer per name; the rows themselves never change, so the result does not depend on the store.
  A checkpointed pass names its "disk" folder after its checkpoint file (:func:`checkpoint_rows`), so the
  next run with that checkpoint removes what a killed one left (:func:`discard_rows`).
- ``WideEvaluator``: model calls of up to ``width`` rows with a per-row time (the model takes t of shape
  (B,)), every call through :func:`boss_fast.ode.for_rows` with the global noise rows of its samples; run
  eager, compiled (``torch.compile``) or replayed from a CUDA graph (a fixed width: the last call is padded).

Layer: 4 (beside ``cost``, above ``trajectories``; below ``global_objective``, ``search`` and
``straighten``). It imports ``_checkpoint``, ``_header``, ``_runtime``, ``_validation`` and ``ode`` only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import count

import numpy as np
import torch
from tqdm import tqdm

from boss_fast._checkpoint import read_npz_checkpoint, write_npz_checkpoint
from boss_fast._header import make_header
from boss_fast._identity import path_tag
from boss_fast._runtime import all_reduce_sums, rank_path, rank_world
from boss_fast._validation import check_choice, check_velocity_output
from boss_fast.ode import VelocityFn, for_rows

__all__ = [
    "ROWS_PREFIX",
    "STORES",
    "Checkpoint",
    "RowStore",
    "Shard",
    "WideEvaluator",
    "checkpoint_rows",
    "discard_rows",
    "progress_bar",
    "resolve_wide_mode",
]

STORES: tuple[str, ...] = ("device", "host", "disk")
WIDE_MODES: tuple[str, ...] = ("auto", "eager", "compile", "cuda_graph")
ROWS_PREFIX = "boss_fast_rows_"  # every folder of the "disk" store starts with it


# ---------------------------------------------------------------------------------------------- sharding


@dataclass(frozen=True)
class Shard:
    """The noise batches of one rank: batch b holds noises b * batch_size .. min((b + 1) * batch_size, M) - 1.

    Example:
        >>> shard = Shard(num_samples=10, batch_size=4, rank=1, world=2)
        >>> shard.mine, shard.span(1), shard.sizes
        ([1], (4, 8), [4])
    """

    num_samples: int
    batch_size: int
    rank: int = 0
    world: int = 1

    @classmethod
    def of_this_process(cls, num_samples: int, batch_size: int) -> Shard:
        """The shard of the calling process (rank and world size of the default process group)."""
        rank, world = rank_world()
        return cls(num_samples, batch_size, rank, world)

    @property
    def num_batches(self) -> int:
        return -(-self.num_samples // self.batch_size)

    @property
    def mine(self) -> list[int]:
        """This rank's batches, in order."""
        return list(range(self.rank, self.num_batches, self.world))

    def span(self, b: int) -> tuple[int, int]:
        """(start, stop) global noise rows of batch ``b``."""
        return b * self.batch_size, min((b + 1) * self.batch_size, self.num_samples)

    @property
    def sizes(self) -> list[int]:
        """Samples in each of this rank's batches, in order."""
        return [stop - start for start, stop in map(self.span, self.mine)]

    def reduce(self, sums: np.ndarray, count: int) -> tuple[np.ndarray, int]:
        """(sums, count) summed over every rank in float64 (unchanged in one process)."""
        return all_reduce_sums(sums, count) if self.world > 1 else (sums, count)

    def min_over_ranks(self, value: int) -> int:
        """The smallest ``value`` over the ranks (a job stopped between two ranks' writes resumes from the
        step all of them finished)."""
        if self.world == 1:
            return value
        dist = torch.distributed
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        packed = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(packed, op=dist.ReduceOp.MIN)
        return int(packed.item())


def progress_bar(total: int, initial: int, progress: bool, desc: str, unit: str = "batch") -> tqdm:
    """A tqdm bar shown on rank 0 only (and only when ``progress``)."""
    rank, _ = rank_world()
    return tqdm(total=total, initial=initial, disable=not progress or rank != 0, desc=desc, unit=unit)


# -------------------------------------------------------------------------------------------- checkpoint


class Checkpoint:
    """One rank's ``.npz`` checkpoint of a pass: the common header, atomic rewrites, refusal by name.

    The header is ``_header.make_header(fmt, version, **run, rank=r, world_size=W)``; ``load`` returns the
    stored arrays (after checking the header, ValueError naming the path and the first field that differs)
    or None when no file exists yet. Under torch.distributed each rank writes ``<root>.rank{r}-of-{W}<ext>``.
    """

    def __init__(self, path: str, header: dict[str, object], what: str) -> None:
        self.path, self.header, self.what = path, header, what

    @classmethod
    def open(
        cls, checkpoint: str | os.PathLike | None, fmt: str, version: int, run: dict[str, object], what: str
    ) -> Checkpoint | None:
        """The checkpoint of this rank, or None without a ``checkpoint`` path."""
        if checkpoint is None:
            return None
        rank, world = rank_world()
        header = make_header(fmt, version, **run, rank=rank, world_size=world)
        return cls(rank_path(os.fspath(checkpoint), rank, world), header, what)

    def load(self) -> dict[str, np.ndarray] | None:
        if not os.path.exists(self.path):
            return None
        return read_npz_checkpoint(self.path, self.header, self.what)

    def save(self, **payload: object) -> None:
        write_npz_checkpoint(self.path, self.header, **payload)


# ------------------------------------------------------------------------------------------- row store


class RowStore:
    """Per-sample rows of this rank's batches between passes: for each name, one (rows, B_b, ...) block per
    batch, kept on the device, in host memory or in a memory-mapped file.

    ``load(name, i)`` returns batch i's block on the device: the block itself for "device"; otherwise a
    copy in one work buffer per name (reused from batch to batch, sized for the largest batch), so the
    device holds one batch in flight. ``save(name, i, block)`` writes it back (nothing to do for "device").
    Blocks start zeroed. ``close()`` deletes the files of "disk" (also on garbage collection of the folder's
    owner via ``with``).

    Args:
        kind: "device", "host" or "disk".
        layout: {name: rows}, e.g. {"teacher": N, "states": N, "velocities": N - 1}.
        sample_shape: one sample's shape; sizes: samples in each batch.
        dtype, device: of the rows (the compute dtype: no lower storage dtype is offered).
        folder: where "disk" makes its temporary folder (default: the system's temporary directory).
        name: "disk"'s folder name under ``folder`` (a checkpointed pass's, :func:`checkpoint_rows`; what is
            there already, a killed run's rows, is removed first); None: a fresh temporary name.

    Example:
        >>> with RowStore("disk", {"x": 3}, (2,), [4, 1], torch.float32, torch.device("cpu")) as store:
        ...     block = store.load("x", 1)
        ...     block += 1.0
        ...     store.save("x", 1, block)
        ...     store.load("x", 1).shape, float(store.load("x", 1).sum()), float(store.load("x", 0).sum())
        (torch.Size([3, 1, 2]), 6.0, 0.0)
    """

    def __init__(
        self,
        kind: str,
        layout: dict[str, int],
        sample_shape: Sequence[int],
        sizes: Sequence[int],
        dtype: torch.dtype,
        device: torch.device,
        folder: str | os.PathLike | None = None,
        name: str | None = None,
    ) -> None:
        self.kind = check_choice(kind, STORES, "store")
        self.device, self.dtype = device, dtype
        self._shape, self._sizes, self._layout = tuple(sample_shape), list(sizes), dict(layout)
        self._folder = _rows_folder(folder, name) if kind == "disk" else None
        self._blocks = {name: self._allocate(name, rows) for name, rows in layout.items()}
        self._work: dict[str, torch.Tensor] = {}

    def _allocate(self, name: str, rows: int) -> list[torch.Tensor]:
        per = int(np.prod(self._shape, dtype=np.int64)) * rows
        total = per * sum(self._sizes)
        if self.kind == "device":
            flat = torch.zeros(total, dtype=self.dtype, device=self.device)
        elif self.kind == "host":
            pin = self.device.type == "cuda"
            flat = torch.zeros(total, dtype=self.dtype, pin_memory=pin)
        else:  # a sparse file of zeros, paged in and out by the kernel: not anonymous memory
            path = os.path.join(self._folder, f"{name}.bin")
            flat = torch.from_file(path, shared=True, size=max(total, 1), dtype=self.dtype)[:total]
        blocks, offset = [], 0
        for b in self._sizes:
            blocks.append(flat[offset : offset + per * b].view(rows, b, *self._shape))
            offset += per * b
        return blocks

    def load(self, name: str, i: int) -> torch.Tensor:
        block = self._blocks[name][i]
        if self.kind == "device":
            return block
        work = self._work.get(name)
        if work is None:
            rows = self._layout[name]
            work = torch.empty(rows * max(self._sizes) * int(np.prod(self._shape, dtype=np.int64)),
                               dtype=self.dtype, device=self.device)  # fmt: skip
            self._work[name] = work
        out = work[: block.numel()].view(block.shape)
        out.copy_(block, non_blocking=True)
        return out

    def save(self, name: str, i: int, block: torch.Tensor) -> None:
        stored = self._blocks[name][i]
        if stored.data_ptr() != block.data_ptr():
            stored.copy_(block)

    def close(self) -> None:
        self._blocks, self._work = {}, {}
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> RowStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def checkpoint_rows(checkpoint_path: str | os.PathLike) -> str:
    """The "disk" store's folder name of a pass checkpointed at ``checkpoint_path`` (this rank's file): the
    file's name and a digest of its absolute path (two checkpoints of one name in two folders can share a
    ``store_dir``), the same for every run with that checkpoint."""
    return f"{ROWS_PREFIX}{os.path.basename(os.fspath(checkpoint_path))}-{path_tag(checkpoint_path)}"


def discard_rows(folder: str | os.PathLike | None, name: str) -> str:
    """Remove the folder ``name`` under ``folder`` (default: the system's temporary directory) if it exists
    (the rows a killed run left: a resumed pass rebuilds its rows, it never reads them); return its path."""
    path = os.path.join(os.fspath(folder) if folder is not None else tempfile.gettempdir(), name)
    shutil.rmtree(path, ignore_errors=True)
    return path


def _rows_folder(folder: str | os.PathLike | None, name: str | None) -> str:
    """A new, empty folder for "disk"'s files: a fresh temporary one, or ``name`` (a killed run's removed)."""
    if name is None:
        return tempfile.mkdtemp(prefix=ROWS_PREFIX, dir=folder)
    path = discard_rows(folder, name)
    os.makedirs(path)
    return path


# ------------------------------------------------------------------------------------------ wide calls


def resolve_wide_mode(mode: str | None, device: torch.device) -> str:
    """The mode of the search's own wide calls: None and "eager" run eager; "auto" is "cuda_graph" on CUDA
    and "eager" elsewhere (measuring compile against eager, as ``Sampler`` does, would cost a compile per
    search); "compile" and "cuda_graph" as asked (cuda_graph needs a CUDA device: ValueError)."""
    if mode is None:
        return "eager"
    mode = check_choice(mode, WIDE_MODES, "mode")
    if mode == "auto":
        return "cuda_graph" if device.type == "cuda" else "eager"
    if mode == "cuda_graph" and device.type != "cuda":
        raise ValueError(f"mode='cuda_graph' needs a CUDA device, got {device}")
    return mode


_call_ids = count()


def _banked_call(velocity: VelocityFn, x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return for_rows(velocity, rows)(x, t)


def _compiled_call(velocity: VelocityFn) -> Callable[..., torch.Tensor]:
    """``torch.compile`` of one model call (fixed shapes). Each evaluator compiles its own copy of the code:
    dynamo counts recompiles per code object (8 at most), as ``Sampler`` found."""
    code = _banked_call.__code__.replace(co_name=f"_wide_call_{next(_call_ids)}")
    fn = types.FunctionType(code, _banked_call.__globals__, code.co_name)
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    return lambda x, t, rows: compiled(velocity, x, t, rows)


class WideEvaluator:
    """The velocity at many (state, time, noise row) rows, in calls of at most ``width`` rows.

    ``evaluator(x, t, rows, out)``: x (R, ...) states, t (R,) times in x's dtype, rows (R,) int64 global noise
    rows (each call goes through ``for_rows(velocity, rows)``), out (R, ...) receives the velocities. Modes:
    "eager"; "compile" (compiled once) and "cuda_graph" (one graph, captured on first use), both on static
    buffers of exactly ``width`` rows: a shorter call is padded with the buffer's previous rows (zeros at
    first), whose outputs are dropped.
    ``calls`` and ``rows_evaluated`` count the model calls and the rows they carried (padding excluded).

    Example:
        >>> ev = WideEvaluator(lambda x, t: x * t[:, None], width=3)
        >>> out = torch.empty(4, 2)
        >>> ev(torch.ones(4, 2), torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.arange(4), out)
        >>> out[:, 0].tolist(), ev.calls
        ([0.0, 1.0, 2.0, 3.0], 2)
    """

    def __init__(self, velocity: VelocityFn, width: int, mode: str = "eager") -> None:
        self.velocity, self.width, self.mode = velocity, int(width), mode
        self.calls = self.rows_evaluated = 0
        self._compiled: Callable[..., torch.Tensor] | None = None
        self._graph: tuple | None = None
        self._buffers: tuple[torch.Tensor, ...] | None = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor, out: torch.Tensor) -> None:
        for s in range(0, x.shape[0], self.width):
            e = min(s + self.width, x.shape[0])
            out[s:e].copy_(self._one(x[s:e], t[s:e], rows[s:e]))
            self.calls += 1
            self.rows_evaluated += e - s

    def _one(self, x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.mode == "eager":
            return _checked(_banked_call(self.velocity, x, t, rows), x, t)
        if self.mode == "compile":
            return self._compiled_padded(x, t, rows)
        return self._replay(x, t, rows)

    def _static(self, x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Static (width, ...) input buffers holding this call's rows first (later rows: earlier calls')."""
        if self._buffers is None:
            self._buffers = (x.new_zeros((self.width, *x.shape[1:])), t.new_zeros((self.width,)),
                             rows.new_zeros((self.width,)))  # fmt: skip
        bx, bt, brows = self._buffers
        r = x.shape[0]
        bx[:r].copy_(x)
        bt[:r].copy_(t)
        brows[:r].copy_(rows)
        return bx, bt, brows

    def _compiled_padded(self, x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        # One shape for every call: a compiled call per distinct width would hit dynamo's recompile limit (8)
        # within a few levels (the last call of each level has its own width).
        bx, bt, brows = self._static(x, t, rows)
        if self._compiled is None:
            self._compiled = _compiled_call(self.velocity)
        return _checked(self._compiled(bx, bt, brows), bx, bt)[: x.shape[0]]

    def _replay(self, x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        bx, bt, brows = self._static(x, t, rows)
        if self._graph is None:
            self._graph = _capture(self.velocity, bx, bt, brows)
        graph, bout = self._graph
        graph.replay()
        return bout[: x.shape[0]]


def _checked(v: object, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``check_velocity_output`` of one wide call: metadata only; the time is read back only on error."""
    if isinstance(v, torch.Tensor) and (v.shape, v.dtype, v.device) == (x.shape, x.dtype, x.device):
        return v
    return check_velocity_output(v, x, float(t[0]))


def _capture(velocity: VelocityFn, bx: torch.Tensor, bt: torch.Tensor, brows: torch.Tensor) -> tuple:
    """A CUDA graph of one call on the static buffers (two warm-up calls on a side stream first)."""
    stream = torch.cuda.Stream(bx.device)
    stream.wait_stream(torch.cuda.current_stream(bx.device))
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(2):
            _checked(_banked_call(velocity, bx, bt, brows), bx, bt)
    torch.cuda.current_stream(bx.device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        bout = _banked_call(velocity, bx, bt, brows)
    return graph, bout
