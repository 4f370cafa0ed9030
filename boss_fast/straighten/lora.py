"""LoRA for straightening: rank-r adapters through peft on a model's Linear layers, seeded on their own
generator, and folded back into the base weights."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import torch
from torch import nn

from boss_fast.ode import VelocityFn

__all__ = ["add_lora", "default_lora_targets", "merge_lora"]


def default_lora_targets(model: nn.Module) -> str | list[str]:
    """peft ``target_modules`` for ``model``: the model's own ``lora_targets`` attribute when it has one (a
    regex or a list of names; the bundled DiT names its attention and MLP Linear layers), otherwise the
    names of every ``nn.Linear``."""
    targets = getattr(model, "lora_targets", None)
    if targets is not None:
        return targets if isinstance(targets, str) else list(targets)
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def _matching_modules(model: nn.Module, targets: str | Sequence[str]) -> list[str]:
    """Names peft would adapt: a str is a full regex match, a list matches a name or a dotted suffix."""
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(targets, str):
        return [n for n in names if re.fullmatch(targets, n)]
    wanted = list(targets)
    return [n for n in names if any(n == w or n.endswith("." + w) for w in wanted)]


class _LoraHost(nn.Module):
    """Holds the network for peft: peft reads ``model.config`` as a dict, and the bundled DiT has a
    ``config()`` method, so peft wraps this host (config-free) and ``merge_lora`` unwraps it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t)

    @property
    def for_rows(self) -> Callable[[torch.Tensor], VelocityFn]:
        """The held network's bank (:func:`boss_fast.ode.for_rows`); AttributeError when it has none, so a
        plain network stays plain through peft's attribute forwarding."""
        pick = getattr(self.model, "for_rows", None)
        if pick is None:
            raise AttributeError(f"{type(self.model).__name__} holds no bank of conditionings")
        return pick


def add_lora(
    model: nn.Module,
    rank: int,
    targets: str | Sequence[str] | None = None,
    alpha: float | None = None,
    seed: int | None = None,
) -> nn.Module:
    """Wrap ``model`` with rank-``rank`` LoRA adapters (peft) on ``targets`` (default
    :func:`default_lora_targets`), scale ``alpha / rank`` (alpha defaults to rank); undo with
    :func:`merge_lora`. Raises ValueError when the targets match no module.

    ``seed``: the adapters' initial values are drawn from a generator of their own seeded with it
    (:func:`_seed_adapters`), and torch's global generator is left as it was; None: peft draws them from the
    global generator (another value on every call).
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("lora_rank needs peft: pip install 'boss_fast[lora]'") from err
    targets = default_lora_targets(model) if targets is None else targets
    host = _LoraHost(model)
    matched = _matching_modules(host, targets)
    if not matched:
        linears = [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear)]
        raise ValueError(
            f"lora_targets {targets!r} match no module of {type(model).__name__}; its Linear layers are "
            f"{linears[:8]}{' ...' if len(linears) > 8 else ''}"
        )
    config = LoraConfig(
        r=rank,
        lora_alpha=float(rank if alpha is None else alpha),
        target_modules=targets if isinstance(targets, str) else list(targets),
        lora_dropout=0.0,
        bias="none",
    )
    if seed is None:
        return get_peft_model(host, config)
    with torch.random.fork_rng(devices=[]):  # peft's own draws (on the host) leave the caller's generator
        wrapped = get_peft_model(host, config)
    _seed_adapters(wrapped, seed)
    return wrapped


def _seed_adapters(model: nn.Module, seed: int) -> None:
    """Redraw every adapter's random initial values as peft draws them (``lora_A`` kaiming-uniform with
    a = sqrt(5), an embedding's ``lora_embedding_B`` standard normal; the other halves stay zero) from one
    generator seeded with ``seed``, in parameter order, on the host (the same values on every device)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_A." not in name and ".lora_embedding_B." not in name:
                continue
            host = torch.empty(param.shape, dtype=param.dtype)
            if ".lora_A." in name:
                nn.init.kaiming_uniform_(host, a=math.sqrt(5), generator=generator)
            else:
                nn.init.normal_(host, generator=generator)
            param.copy_(host)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA adapters into the base weights (peft ``merge_and_unload``) and return the plain module,
    which computes the same velocities without the adapter overhead; a module without adapters is
    returned unchanged.

    Example:
        >>> net = torch.nn.Linear(2, 2)
        >>> merge_lora(net) is net  # no adapters: unchanged
        True
    """
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.model if isinstance(model, _LoraHost) else model
