"""The 8x8 handwritten digits that scikit-learn ships, as images in [-1, 1] with a fixed split.

The data (``sklearn.datasets.load_digits``: 1797 images, 8x8 pixels with integer intensities 0..16, labels
0..9; BSD-3-Clause, from the UCI optical digits set) are bundled with this package as
``models/datasets/digits_8x8.npz`` (uint8, scikit-learn's order, 45 kB; written by
``scripts/bundle_digits.py``), so nothing is downloaded and scikit-learn is not needed.
"""

from __future__ import annotations

import functools
from importlib import resources
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
_N_IMAGES = 1797
_DATA_FILE = "datasets/digits_8x8.npz"


def _load_raw() -> tuple[np.ndarray, np.ndarray]:
    """The bundled images (1797, 8, 8) uint8 and labels (1797,) uint8, in scikit-learn's order."""
    with resources.files("boss_fast.models").joinpath(_DATA_FILE).open("rb") as f, np.load(f) as z:
        images, labels = z["images"], z["labels"]
    if images.shape != (_N_IMAGES, 8, 8) or labels.shape != (_N_IMAGES,) or images.dtype != np.uint8:
        raise ValueError(f"boss_fast/models/{_DATA_FILE} is not the bundled digits (reinstall boss_fast)")
    return images, labels


@functools.lru_cache(maxsize=1)
def _load_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    raw_images, raw_labels = _load_raw()
    images = raw_images.astype(np.float32) / _MAX_INTENSITY * 2.0 - 1.0
    labels = raw_labels.astype(np.int64)
    perm = np.random.RandomState(SPLIT_SEED).permutation(len(labels))
    train, test = perm[:N_TRAIN], perm[N_TRAIN:]
    return {
        "train": (images[train][:, None], labels[train]),
        "test": (images[test][:, None], labels[test]),
    }


def digits(split: Literal["train", "test"] = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Return the ``split`` of the bundled 8x8 digits (scikit-learn's ``load_digits``).

    Args:
        split: ``"train"`` (1500 images) or ``"test"`` (the 297 held-out images).

    Returns:
        ``(images, labels)``: images float32 of shape (N, 1, 8, 8) scaled linearly from intensities
        0..16 to [-1, 1] (-1 is background), labels int64 of shape (N,) in 0..9. Fresh tensors: callers
        may modify them.

    Raises:
        ValueError: for an unknown split.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images, labels = _load_split()[split]
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())
