"""What the package's checkpoint writers share: the header that says what a file is, the check that a file
found on disk is one of ours and belongs to this run, and the atomic write.

The cost checkpoint (``search``) and the global objective's (``global_objective``) are ``.npz`` files
written and read by :func:`write_npz_checkpoint` / :func:`read_npz_checkpoint`; the straightening checkpoint
(``straighten``) is a ``torch.save`` file. All start from :func:`checkpoint_header` and refuse a foreign or
mismatched file by name (ValueError).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Mapping
from typing import IO

import numpy as np
import torch

from boss_fast._runtime import noise_digest
from boss_fast._validation import atomic_write

__all__ = [
    "check_checkpoint_format",
    "checkpoint_header",
    "checkpoint_model_key",
    "first_difference",
    "noise_identity",
    "read_npz_checkpoint",
    "write_checkpoint",
    "write_npz_checkpoint",
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


def write_npz_checkpoint(path: str | os.PathLike, header: Mapping[str, object], **payload: object) -> None:
    """An ``.npz`` checkpoint: the header's fields and the payload arrays, written atomically."""
    arrays = {key: np.asarray(value) for key, value in header.items()}
    arrays.update({key: np.asarray(value) for key, value in payload.items()})
    write_checkpoint(path, lambda f: np.savez(f, **arrays))


def read_npz_checkpoint(path: str, header: Mapping[str, object], what: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` checkpoint written by :func:`write_npz_checkpoint`, after checking that it
    is readable, is a ``header["format"]`` file and holds this run's header (ValueError naming ``path`` and
    the first field that differs)."""
    try:
        # Open the file ourselves: np.load(path) leaks its handle when the zip is corrupt.
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            stored = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{what} {path} is unreadable (corrupted or not a checkpoint): {err}") from None
    check_checkpoint_format(str(stored.get("format", "")), str(header["format"]), path, what)
    key = first_difference(stored, header, lambda a, b: np.array_equal(a, np.asarray(b)))
    if key is not None and key not in stored:
        raise ValueError(f"{what} {path} lacks {key!r}; delete it or pass another path")
    if key is not None:
        raise ValueError(
            f"{what} {path} was written for a different run: {key} = {stored[key].tolist()!r} there, "
            f"{np.asarray(header[key]).tolist()!r} here; delete it or pass another checkpoint path"
        )
    return stored


def noise_identity(noise: torch.Tensor, model: str) -> dict[str, str]:
    """What a checkpoint header records of a run over given noise: its digest, one sample's shape, its dtype,
    and the model key (:func:`checkpoint_model_key`)."""
    return {
        "noise": noise_digest(noise),
        "sample_shape": str(tuple(noise.shape[1:])),
        "dtype": str(noise.dtype),
        "model": model,
    }
