"""The models boss_fast ships: an analytic GMM flow, a 2-D MLP, a digits DiT and a digits classifier.

Every velocity model is called as ``velocity(x, t)`` with x (B, ...) and t (B,) float times in [0, 1]
(t = 0 is N(0, I) noise, t = 1 is data; rectified flow x_t = t x1 + (1 - t) x0, velocity x1 - x0).

Bundled models (``load_bundled(name)``), and the script that recreates each weight file:

- ``gmm2d``: exact velocity of 8 Gaussians on a circle (:func:`eight_gaussians`); analytic, no file.
- ``mlp2d``: :class:`MLPVelocity` trained by flow matching on ``gmm2d`` samples
  (``scripts/train_mlp2d.py``).
- ``gmm2d_narrow``: the same 8 Gaussians with std :data:`NARROW_STD` (0.05): narrow modes, paths that turn
  late and sharply, the demo's model where schedules matter; analytic, no file.
  ``scripts/train_mlp2d.py --model mlp2d_narrow`` trains an MLP twin of it (not shipped yet).
- ``digits_dit``: :class:`DiT` velocity for the 8x8 scikit-learn digits, x of shape (B, 1, 8, 8)
  (``scripts/train_digits_dit.py``).
- ``digits_classifier``: :class:`DigitsClassifier`, whose ``features`` define ``boss_fast.metrics.digits_fd``
  (``scripts/train_digits_classifier.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from boss_fast.models._io import WEIGHTS_DIR, WeightsFileError, read_weights, save_weights
from boss_fast.models.classifier import DigitsClassifier
from boss_fast.models.data import digits
from boss_fast.models.dit import DiT
from boss_fast.models.gmm import NARROW_STD, GaussianMixtureFlow, eight_gaussians
from boss_fast.models.mlp import MLPVelocity

__all__ = [
    "DiT",
    "DigitsClassifier",
    "GaussianMixtureFlow",
    "NARROW_STD",
    "MLPVelocity",
    "WEIGHTS_DIR",
    "WeightsFileError",
    "bundled_models",
    "digits",
    "eight_gaussians",
    "load_bundled",
    "read_weights",
    "save_weights",
    "weights_path",
]

# name -> (module class built from the file's config, training script). The gmm2d flows are analytic.
_TRAINED: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "mlp2d": (MLPVelocity, "scripts/train_mlp2d.py"),
    "digits_dit": (DiT, "scripts/train_digits_dit.py"),
    "digits_classifier": (DigitsClassifier, "scripts/train_digits_classifier.py"),
}
_ANALYTIC: dict[str, Callable[[], nn.Module]] = {
    "gmm2d": eight_gaussians,
    "gmm2d_narrow": lambda: eight_gaussians(std=NARROW_STD),
}


def bundled_models() -> list[str]:
    """Names accepted by :func:`load_bundled`, sorted."""
    return sorted([*_TRAINED, *_ANALYTIC])


def weights_path(name: str) -> Path:
    """Path of the shipped weight file of a trained bundled model (it may not exist yet)."""
    if name not in _TRAINED:
        raise ValueError(f"{name!r} has no weight file; trained bundled models: {sorted(_TRAINED)}")
    return WEIGHTS_DIR / f"{name}.safetensors"


def load_bundled(
    name: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Build a bundled model and load its shipped weights.

    Args:
        name: one of :func:`bundled_models`: "digits_dit", "digits_classifier", "mlp2d", "gmm2d",
            "gmm2d_narrow".
        device: where to put it (default CPU).
        dtype: floating dtype of the parameters (default float32; the analytic gmm2d flows keep their float64
            buffers and computes in the dtype of its input, so ``dtype`` is ignored for it).
        weights: another weights file for the same architecture instead of the shipped one, e.g. a student
            written by ``boss-fast straighten`` (it must declare the same model name).

    Returns:
        The module in eval mode with ``requires_grad`` off on every parameter.

    Raises:
        ValueError: unknown name.
        FileNotFoundError: the weight file is missing (the message names the script that recreates it).
        WeightsFileError: the weight file is corrupt or does not match the architecture.

    Example:
        >>> flow = load_bundled("gmm2d")
        >>> flow(torch.zeros(4, 2), torch.zeros(4)).shape
        torch.Size([4, 2])
    """
    if name in _ANALYTIC:
        if weights is not None:
            raise ValueError(f"{name!r} is analytic: it has no weights to load from {weights}")
        model = _ANALYTIC[name]()
    elif name in _TRAINED:
        cls, script = _TRAINED[name]
        path = weights_path(name) if weights is None else Path(weights)
        if weights is not None:
            script = "boss-fast straighten"
        tensors, config, _ = read_weights(path, name=name, script=script)
        try:
            model = cls(**config)
            expected = model.state_dict()
            if set(tensors) != set(expected):
                missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
                raise WeightsFileError(f"tensor names differ (missing {missing}, unexpected {extra})")
            for key, value in tensors.items():
                if value.shape != expected[key].shape:
                    raise WeightsFileError(
                        f"{key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}"
                    )
            # Stored floats may be float16 (smaller files); copy_ casts them to the parameters' dtype.
            model.load_state_dict(tensors, strict=True)
        except (TypeError, ValueError, WeightsFileError) as err:
            how = (
                f"`{script}`"
                if weights is not None
                else f"`python {script}` from a boss_fast source checkout"
            )
            raise WeightsFileError(
                f"weights file {path} does not match {cls.__name__} ({err}); recreate it with {how}"
            ) from err
        model = model.to(dtype=dtype or torch.float32)
    else:
        raise ValueError(f"unknown bundled model {name!r}; available: {bundled_models()}")
    model = model.to(device=device or "cpu").eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model
