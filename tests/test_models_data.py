"""boss_fast.models.data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boss_fast.models import (
    digits,
)


def test_bundled_digits_match_scikit_learn() -> None:
    # The bundled file must give exactly what scikit-learn's load_digits gave before it was bundled: the
    # weights, the FD references and the figures were all made from that split.
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    bunch = sklearn_datasets.load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0 * 2.0 - 1.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    perm = np.random.RandomState(0).permutation(len(labels))
    for split, rows in (("train", perm[:1500]), ("test", perm[1500:])):
        x, y = digits(split)
        np.testing.assert_array_equal(x.numpy(), images[rows][:, None])
        np.testing.assert_array_equal(y.numpy(), labels[rows])
        assert x.dtype == torch.float32 and y.dtype == torch.int64


def test_digits_split() -> None:
    train_x, train_y = digits("train")
    test_x, test_y = digits("test")
    assert train_x.shape == (1500, 1, 8, 8) and test_x.shape == (297, 1, 8, 8)
    assert train_x.dtype == torch.float32 and train_y.dtype == torch.int64
    assert train_x.min() == -1.0 and train_x.max() == 1.0
    assert set(test_y.tolist()) == set(range(10))
    # Deterministic, and callers get fresh copies.
    train_x[0] = 0.0
    torch.testing.assert_close(digits("test")[0], test_x, rtol=0, atol=0)
    assert digits("train")[0][0].min() == -1.0
    with pytest.raises(ValueError, match="split"):
        digits("validation")  # type: ignore[arg-type]
