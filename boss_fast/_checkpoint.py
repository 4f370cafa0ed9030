"""The ``.npz`` checkpoints of the streaming passes (the cost's, ``search``; the global objective's DP,
``global_objective``; both through ``engine.Checkpoint``): written by :func:`write_npz_checkpoint` and read by
:func:`read_npz_checkpoint` with the common header (``boss_fast._header``) and a checksum of every array
(``payload_sha256``, ``_identity.arrays_digest``), what their header records of the run's noise
(:func:`noise_identity`), and the checked reading of one stored field (:func:`stored_array`,
:func:`stored_count`).

Files written before the checksum existed hold no ``payload_sha256``: they are read as they were (header
checked, fields checked by their readers); a file that holds one is refused when any array differs from it.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping

import numpy as np
import torch

from boss_fast._header import check_header, write_file
from boss_fast._identity import arrays_digest, noise_digest

__all__ = [
    "CHECKSUM_KEY",
    "noise_identity",
    "read_npz_checkpoint",
    "stored_array",
    "stored_count",
    "write_npz_checkpoint",
]

CHECKSUM_KEY = "payload_sha256"  # the digest of every other array of the file


def write_npz_checkpoint(path: str | os.PathLike, header: Mapping[str, object], **payload: object) -> None:
    """An ``.npz`` checkpoint: the header's fields, the payload arrays and their checksum (``CHECKSUM_KEY``:
    ``arrays_digest`` of all of them), written atomically."""
    arrays = {key: np.asarray(value) for key, value in header.items()}
    arrays.update({key: np.asarray(value) for key, value in payload.items()})
    if CHECKSUM_KEY in arrays:
        raise ValueError(
            f"{CHECKSUM_KEY!r} is the checkpoint's own checksum field, not a header or payload name"
        )
    arrays[CHECKSUM_KEY] = np.asarray(arrays_digest(arrays))
    write_file(path, lambda f: np.savez(f, **arrays))


def _check_checksum(stored: Mapping[str, np.ndarray], path: str, what: str, remedy: str) -> None:
    """Refuse a file whose arrays differ from its recorded checksum; a file without one (written before the
    checksum existed) passes."""
    if CHECKSUM_KEY not in stored:
        return
    recorded = stored[CHECKSUM_KEY]
    actual = arrays_digest({key: value for key, value in stored.items() if key != CHECKSUM_KEY})
    if recorded.shape != () or recorded.dtype.kind != "U" or str(recorded) != actual:
        raise ValueError(
            f"{what} {path} fails its checksum ({CHECKSUM_KEY} does not match its arrays): the file was "
            f"corrupted or edited; {remedy}"
        )


def read_npz_checkpoint(path: str, header: Mapping[str, object], what: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` checkpoint written by :func:`write_npz_checkpoint`, after checking that it
    is readable and that its header is this run's (``_header.check_header``: ValueError naming ``path`` and
    the format, the version or the first field that differs)."""
    try:
        # Open the file ourselves: np.load(path) leaks its handle when the zip is corrupt.
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            stored = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{what} {path} is unreadable (corrupted or not a checkpoint): {err}") from None
    remedy = "delete it or pass another checkpoint path"
    check_header(
        stored, header, path, what, equal=lambda a, b: np.array_equal(a, np.asarray(b)), remedy=remedy
    )
    _check_checksum(stored, path, what, remedy)
    return stored


def stored_array(
    stored: Mapping[str, np.ndarray],
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype | type,
    path: str,
    what: str,
) -> np.ndarray:
    """A writable copy of the field ``name`` of a checkpoint read by :func:`read_npz_checkpoint`, refused
    (ValueError naming ``path`` and the field) when it is missing or holds another shape or dtype."""
    if name not in stored:
        raise ValueError(f"{what} {path} lacks {name!r} (a {np.dtype(dtype)} array of shape {shape})")
    value = stored[name]
    if value.dtype != np.dtype(dtype):
        raise ValueError(f"{what} {path} holds {name!r} of dtype {value.dtype}, expected {np.dtype(dtype)}")
    if value.shape != shape:
        raise ValueError(f"{what} {path} holds {name!r} of shape {value.shape}, expected {shape}")
    return value.copy()


def stored_count(stored: Mapping[str, np.ndarray], name: str, path: str, what: str) -> int:
    """The integer field ``name`` (a 0-d integer array) of a checkpoint, refused by name otherwise."""
    if name not in stored:
        raise ValueError(f"{what} {path} lacks {name!r} (an integer)")
    value = stored[name]
    if value.shape != () or value.dtype.kind not in "iu":
        raise ValueError(
            f"{what} {path} holds {name!r} of dtype {value.dtype}, shape {value.shape}: not an integer"
        )
    return int(value)


def noise_identity(noise: torch.Tensor, model: str) -> dict[str, str]:
    """What a checkpoint header records of a run over given noise: its digest, one sample's shape, its dtype,
    and the model key (``_identity.checkpoint_model_key``)."""
    return {
        "noise": noise_digest(noise),
        "sample_shape": str(tuple(noise.shape[1:])),
        "dtype": str(noise.dtype),
        "model": model,
    }
