"""The 8x8 handwritten digits that scikit-learn ships, as images in [-1, 1] with a fixed split.

``sklearn.datasets.load_digits`` reads a file bundled inside scikit-learn (1797 images, 8x8 pixels with
integer intensities 0..16, labels 0..9): nothing is downloaded. scikit-learn is an optional dependency
(``pip install scikit-learn``), imported only when the digits are first asked for.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import torch

__all__ = ["DIGITS_SHAPE", "N_TRAIN", "SPLIT_SEED", "digits"]

#: (channels, height, width) of one digit image.
DIGITS_SHAPE: tuple[int, int, int] = (1, 8, 8)
#: Images in the training split; the other 1797 - 1500 = 297 are held out (used for FD references).
N_TRAIN: int = 1500
#: Seed of the split permutation. ``np.random.RandomState`` is NumPy's legacy generator whose stream is
#: frozen across NumPy versions, so the split is the same on every install.
SPLIT_SEED: int = 0

# Pixel intensities in load_digits are integers 0..16.
_MAX_INTENSITY = 16.0


@functools.lru_cache(maxsize=1)
def _load_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "boss_fast.models.digits needs scikit-learn for its bundled 8x8 digits; "
            "install it with `pip install scikit-learn` (or `pip install boss_fast[train]`)."
        ) from err
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / _MAX_INTENSITY * 2.0 - 1.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    perm = np.random.RandomState(SPLIT_SEED).permutation(len(labels))
    train, test = perm[:N_TRAIN], perm[N_TRAIN:]
    return {
        "train": (images[train][:, None], labels[train]),
        "test": (images[test][:, None], labels[test]),
    }


def digits(split: Literal["train", "test"] = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Return the ``split`` of scikit-learn's 8x8 digits.

    Args:
        split: ``"train"`` (1500 images) or ``"test"`` (the 297 held-out images).

    Returns:
        ``(images, labels)``: images float32 of shape (N, 1, 8, 8) scaled linearly from intensities
        0..16 to [-1, 1] (-1 is background), labels int64 of shape (N,) in 0..9. Fresh tensors: callers
        may modify them.

    Raises:
        ValueError: for an unknown split.
        ImportError: if scikit-learn is not installed.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images, labels = _load_split()[split]
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())
