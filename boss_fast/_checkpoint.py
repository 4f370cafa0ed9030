"""What the package's checkpoint writers share: the header that says what a file is, the check that a file
found on disk is one of ours and belongs to this run, and the atomic write.

The cost checkpoint (``search``, an ``.npz``) and the straightening checkpoint (``straighten``, a
``torch.save`` file) store different payloads; both start from :func:`checkpoint_header` and refuse a
foreign or mismatched file by name (ValueError).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import IO

import torch

from boss_fast._validation import atomic_write

__all__ = [
    "check_checkpoint_format",
    "checkpoint_header",
    "checkpoint_model_key",
    "first_difference",
    "write_checkpoint",
]


def checkpoint_header(fmt: str, version: int, **fields: object) -> dict[str, object]:
    """A checkpoint header: the format name and version first, then the run's identity ``fields``."""
    return {"format": fmt, "version": version, **fields}


def check_checkpoint_format(stored: object, fmt: str, path: str, what: str) -> None:
    """Raise a ValueError naming ``path`` unless the stored format marker is ``fmt``."""
    if stored != fmt:
        raise ValueError(f"{path} is not a boss_fast {what} (format {stored!r})")


def first_difference(
    stored: Mapping[str, object], expected: Mapping[str, object], equal: Callable[[object, object], bool]
) -> str | None:
    """The first key of ``expected`` that ``stored`` lacks or holds differently, or None when all match."""
    for key, value in expected.items():
        if key not in stored or not equal(stored[key], value):
            return key
    return None


def write_checkpoint(path: str | os.PathLike, fill: Callable[[IO[bytes]], None]) -> None:
    """Create the directory if needed and write the file atomically (``_validation.atomic_write``)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, fill)


def checkpoint_model_key(velocity: object, checkpoint: object, key: str | None, fingerprint: Callable) -> str:
    """The model identity a checkpoint header records: ``key`` and, for an ``nn.Module``, its fingerprint.

    A velocity that is not a module has no fingerprint: with a ``checkpoint`` it needs an explicit ``key``
    (ValueError otherwise), or a checkpoint written for another function would be resumed.
    """
    if key is not None and (not isinstance(key, str) or not key):
        raise ValueError(f"checkpoint_key must be a non-empty str, got {key!r}")
    if checkpoint is None:
        return ""
    if isinstance(velocity, torch.nn.Module):
        return fingerprint(velocity) + ("" if key is None else f"|{key}")
    if key is None:
        raise ValueError(
            f"checkpoint= needs an identity for a velocity that is not a torch.nn.Module ({velocity!r} has "
            "no fingerprint): pass checkpoint_key='<a name that changes whenever the function does>'"
        )
    return f"key:{key}"
