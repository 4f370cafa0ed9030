"""The one header every file boss_fast writes starts from, the one check a file found on disk passes before it
is read, and the one atomic write.

A header is ``{"format": name, "version": n, **identity}`` (:func:`make_header`): the format name says what
the file is, the version which layout, the identity fields which run it belongs to (model fingerprint,
noise digest, settings: ``boss_fast._identity``). Each format embeds it its own way (JSON keys: schedules and
schedule sets; ``.npz`` arrays: the search checkpoints; safetensors metadata strings: straightening's pair
shards and the demo's reference cache; a JSON string in a ``torch.save`` dict: the straightening checkpoint)
and hands the decoded mapping to :func:`check_header`, which refuses, naming the file, a foreign format, an
unknown version, a missing or a different identity field (ValueError).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import IO

import numpy as np

from boss_fast._validation import atomic_write

__all__ = ["check_header", "first_difference", "header_strings", "make_header", "write_file"]

_RESERVED = ("format", "version")


def make_header(fmt: str, version: int | str, **identity: object) -> dict[str, object]:
    """A file header: the format name and version first, then the run's ``identity`` fields.

    Example:
        >>> make_header("boss_fast.cost_checkpoint", 3, noise="sha256:00", rank=0)
        {'format': 'boss_fast.cost_checkpoint', 'version': 3, 'noise': 'sha256:00', 'rank': 0}
    """
    return {"format": fmt, "version": version, **identity}


def header_strings(header: Mapping[str, object]) -> dict[str, str]:
    """The header as the string-to-string metadata a safetensors file holds (each value's ``str``)."""
    return {name: str(value) for name, value in header.items()}


def first_difference(
    stored: Mapping[str, object], expected: Mapping[str, object], equal: Callable[[object, object], bool]
) -> str | None:
    """The first key of ``expected`` that ``stored`` lacks or holds differently, or None when all match."""
    for key, value in expected.items():
        if key not in stored or not equal(stored[key], value):
            return key
    return None


def _scalar(value: object) -> object:
    """A 0-d array (an ``.npz`` header field) as its Python value; anything else as it is."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    return value


def _shown(value: object) -> object:
    return value.tolist() if isinstance(value, np.ndarray) else value


def _check_version(stored: object, newest: int | str, oldest: int | None, source: str, what: str) -> None:
    """A version this reader knows: ``oldest`` .. ``newest`` (just ``newest`` without ``oldest``). A format
    whose header holds strings (safetensors metadata) writes its version as a decimal string."""
    value = _scalar(stored)
    if isinstance(newest, str):
        number = int(value) if isinstance(value, str) and value.isdecimal() else None
    else:
        number = value if isinstance(value, int) and not isinstance(value, bool) else None
    top = int(newest)
    if number is None or not (top if oldest is None else oldest) <= number <= top:
        known = f"{top}" if oldest is None or oldest == top else f"{oldest}..{top}"
        raise ValueError(f"{source}: unsupported {what} version {value!r} (this reader knows {known})")


def check_header(
    stored: object,
    expected: Mapping[str, object],
    source: str,
    what: str,
    *,
    equal: Callable[[object, object], bool] = lambda a, b: a == b,
    oldest: int | None = None,
    hint: str = "",
    remedy: str = "delete it or pass another path",
    explain: Callable[[str], str | None] | None = None,
) -> None:
    """Refuse a file's decoded header unless it is ``expected``'s format, a known version and this run's.

    Args:
        stored: the header read from the file (a mapping; JSON object, ``.npz`` arrays, metadata strings).
        expected: :func:`make_header` of this run; every field beside format and version must be in
            ``stored`` and ``equal`` to it.
        source, what: the file's path and what it is ("schedule", "cost checkpoint"), for the messages.
        oldest: the oldest version still read (default: only ``expected["version"]``).
        hint: appended to the wrong-format message (e.g. which loader reads that format).
        remedy: what to do about a file of another run.
        explain: a format's own message for a differing field (None: the generic one).

    Raises:
        ValueError: naming ``source`` and the format, the version or the first field that differs.

    Example:
        >>> stored = {"format": "f", "version": 1, "noise": "a"}
        >>> check_header(stored, make_header("f", 1, noise="b"), "x.json", "file", remedy="delete it")
        Traceback (most recent call last):
        ...
        ValueError: file x.json was written for a different run: noise = 'a' there, 'b' here; delete it
    """
    if not isinstance(stored, Mapping):
        raise ValueError(f"{source}: expected a JSON object, got {type(stored).__name__}")
    fmt = _scalar(stored.get("format"))
    if fmt != expected["format"]:
        raise ValueError(
            f"{source}: not a boss_fast {what} (format {fmt!r}, expected {expected['format']!r}){hint}"
        )
    _check_version(stored.get("version"), expected["version"], oldest, source, what)  # type: ignore[arg-type]
    identity = {k: v for k, v in expected.items() if k not in _RESERVED}
    key = first_difference(stored, identity, equal)
    if key is None:
        return
    if key not in stored:
        raise ValueError(f"{what} {source} lacks {key!r}; {remedy}")
    message = explain(key) if explain is not None else None
    raise ValueError(
        message
        or f"{what} {source} was written for a different run: {key} = {_shown(stored[key])!r} there, "
        f"{_shown(identity[key])!r} here; {remedy}"
    )


def write_file(path: str | os.PathLike, fill: Callable[[IO[bytes]], None]) -> None:
    """Create the directory if needed and write the file atomically: ``fill(f)`` writes a temporary file
    beside ``path``, which is fsynced and renamed over it (``_validation.atomic_write``), so a reader sees
    the old file or the whole new one, never a part."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, fill)
