"""Where a computation runs: the torch.distributed rank and world size, the float64 all-reduce of (sum,
count), each rank's checkpoint path, a module's device and dtype.

Used by the streaming searches (search, global_objective), straightening and the sampler, so each asks the
same way.
"""

from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["all_reduce_sums", "module_placement", "rank_path", "rank_world"]


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without an initialised one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def module_placement(model: object) -> tuple[torch.device | None, torch.dtype | None]:
    """Device and dtype of an ``nn.Module``'s first floating parameter; (None, None) for anything else (a
    plain function, a module without floating parameters): the caller picks its own default."""
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.device, p.dtype
    return None, None


def all_reduce_sums(sums: np.ndarray, count: int) -> tuple[np.ndarray, int]:
    """Sum (sums, count) over the default process group in float64 (NCCL needs the tensor on CUDA)."""
    dist = torch.distributed
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    packed = torch.from_numpy(np.append(sums.ravel(), float(count))).to(device)  # counts < 2**53: exact
    dist.all_reduce(packed)
    flat = packed.cpu().numpy()
    return flat[:-1].reshape(sums.shape).copy(), int(round(flat[-1]))


def rank_path(path: str, rank: int, world: int) -> str:
    """Each rank's own checkpoint file: ``<root>.rank{r}-of-{W}<ext>`` (the path itself when W = 1)."""
    if world == 1:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.rank{rank}-of-{world}{ext}"
