"""Where a computation runs: the torch.distributed rank and world size, a module's device and dtype.

Used by the streaming cost (search), straightening and the sampler, so each asks the same way.
"""

from __future__ import annotations

import torch

__all__ = ["module_placement", "rank_world"]


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
