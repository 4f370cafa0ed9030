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

from boss_fast._validation import atomic_write

__all__ = ["check_checkpoint_format", "checkpoint_header", "first_difference", "write_checkpoint"]


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
