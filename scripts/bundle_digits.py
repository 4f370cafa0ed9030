"""Write ``boss_fast/models/datasets/digits_8x8.npz``: scikit-learn's 8x8 digits, bundled so that the package
(and ``boss-fast demo``) needs no scikit-learn.

The data are ``sklearn.datasets.load_digits()`` (1797 images, 8x8 integer intensities 0..16, labels 0..9),
shipped by scikit-learn under its BSD-3-Clause licence (from the UCI "Optical Recognition of Handwritten
Digits" set). Stored as uint8 in scikit-learn's order; ``boss_fast.models.data`` applies the same seeded
split as before, so the arrays are bit-identical to what scikit-learn gives (``tests/test_models.py``
checks this where scikit-learn is installed). Run: ``python scripts/bundle_digits.py`` (needs scikit-learn).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

OUT = Path(__file__).resolve().parents[1] / "boss_fast" / "models" / "datasets" / "digits_8x8.npz"


def main() -> None:
    bunch = load_digits()
    images = np.asarray(bunch.images)
    labels = np.asarray(bunch.target)
    # Intensities and labels are small non-negative integers: uint8 holds them exactly.
    if not (np.array_equal(images, np.round(images)) and images.min() >= 0 and images.max() <= 16):
        raise SystemExit("unexpected digits intensities")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, images=images.astype(np.uint8), labels=labels.astype(np.uint8))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): images {images.shape}, labels {labels.shape}")


if __name__ == "__main__":
    main()
