"""The ``.npz`` checkpoints of the streaming passes (the cost's, ``search``; the global objective's DP,
``global_objective``; both through ``engine.Checkpoint``): written by :func:`write_npz_checkpoint` and read by
:func:`read_npz_checkpoint` with the common header (``boss_fast._header``), and what their header records of
the run's noise (:func:`noise_identity`).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping

import numpy as np
import torch

from boss_fast._header import check_header, write_file
from boss_fast._identity import noise_digest

__all__ = ["noise_identity", "read_npz_checkpoint", "write_npz_checkpoint"]


def write_npz_checkpoint(path: str | os.PathLike, header: Mapping[str, object], **payload: object) -> None:
    """An ``.npz`` checkpoint: the header's fields and the payload arrays, written atomically."""
    arrays = {key: np.asarray(value) for key, value in header.items()}
    arrays.update({key: np.asarray(value) for key, value in payload.items()})
    write_file(path, lambda f: np.savez(f, **arrays))


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
    check_header(
        stored,
        header,
        path,
        what,
        equal=lambda a, b: np.array_equal(a, np.asarray(b)),
        remedy="delete it or pass another checkpoint path",
    )
    return stored


def noise_identity(noise: torch.Tensor, model: str) -> dict[str, str]:
    """What a checkpoint header records of a run over given noise: its digest, one sample's shape, its dtype,
    and the model key (``_identity.checkpoint_model_key``)."""
    return {
        "noise": noise_digest(noise),
        "sample_shape": str(tuple(noise.shape[1:])),
        "dtype": str(noise.dtype),
        "model": model,
    }
