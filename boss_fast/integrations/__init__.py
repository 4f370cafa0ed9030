"""Adapters to other libraries' conventions, imported on first use so ``import boss_fast`` needs neither.

- :mod:`boss_fast.integrations.diffusers`: ``BossScheduler`` (a diffusers scheduler stepping exactly at a
  schedule's sigmas) and ``DiffusersVelocity`` (a diffusers transformer as ``velocity(x, t)``).
  ``pip install 'boss_fast[diffusers]'``.
- :mod:`boss_fast.integrations.pipelines`: an SD3 or Flux pipeline as a search target (load, encode a prompt
  bank, latent shape and ``mu`` at a resolution); ``boss-fast schedule --pipeline``. Needs diffusers too.
- :func:`diffusers_sigmas` (:mod:`boss_fast.integrations.sigmas`, no diffusers needed): sigmas for diffusers'
  *stock* flow-match scheduler that step at a schedule's times after its shift.
- :mod:`boss_fast.integrations.flow_matching`: Meta's ``flow_matching`` ``ModelWrapper`` both ways and the
  schedule as its ``time_grid``. ``pip install 'boss_fast[flow-matching]'`` (CC BY-NC licensed).

The core never sees these conventions: diffusers' sigma is 1 - t, its timestep sigma * 1000 and its model
output minus our velocity; flow_matching shares ours (t = 0 noise, t = 1 data).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from boss_fast.integrations.sigmas import diffusers_sigmas

__all__ = ["diffusers", "diffusers_sigmas", "flow_matching", "pipelines"]
_MODULES = ("diffusers", "flow_matching", "pipelines")


def __getattr__(name: str) -> ModuleType:
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
