"""The models boss_fast ships: an analytic GMM flow, a 2-D MLP, a digits DiT and a digits classifier.

Every velocity model is called as ``velocity(x, t)`` with x (B, ...) and t (B,) float times in [0, 1]
(t = 0 is N(0, I) noise, t = 1 is data; rectified flow x_t = t x1 + (1 - t) x0, velocity x1 - x0).

Bundled models (``load_bundled(name)``; :data:`BUNDLED` holds each one's loader, sample shape, description
and the script that recreates its weight file):

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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from boss_fast.models._io import WEIGHTS_DIR, WeightsFileError, read_weights, save_weights
from boss_fast.models.classifier import DigitsClassifier
from boss_fast.models.data import DIGITS_SHAPE, digits
from boss_fast.models.dit import DiT
from boss_fast.models.gmm import NARROW_STD, GaussianMixtureFlow, eight_gaussians
from boss_fast.models.mlp import MLPVelocity

__all__ = [
    "BUNDLED",
    "DIGITS_SHAPE",
    "BundledModel",
    "DiT",
    "DigitsClassifier",
    "GaussianMixtureFlow",
    "NARROW_STD",
    "MLPVelocity",
    "WEIGHTS_DIR",
    "WeightsFileError",
    "bundled_models",
    "bundled_velocities",
    "digits",
    "eight_gaussians",
    "load_bundled",
    "read_weights",
    "save_weights",
    "weights_path",
]


@dataclass(frozen=True)
class BundledModel:
    """One bundled model: how it is built, what one sample looks like, and what it is.

    build: the module class built from its weight file's config (``script`` recreates that file), or, for an
    analytic model (``script`` None), a function returning the finished module. shape: one sample's shape,
    the x of ``velocity(x, t)`` (a classifier's input) without the batch dimension. velocity: whether it is
    called as ``velocity(x, t)`` (the classifier is not).
    """

    build: Callable[..., nn.Module]
    shape: tuple[int, ...]
    description: str
    script: str | None = None
    velocity: bool = True

    @property
    def analytic(self) -> bool:
        """No weight file: the module is exact maths (the gmm2d flows)."""
        return self.script is None


# The one registry: the CLI, the demo and the benchmarks read names and shapes from here.
BUNDLED: dict[str, BundledModel] = {
    "gmm2d": BundledModel(eight_gaussians, (2,), "exact velocity of 8 Gaussians on a circle"),
    "gmm2d_narrow": BundledModel(
        lambda: eight_gaussians(std=NARROW_STD), (2,), "the 8 Gaussians with std 0.05: late, sharp turns"
    ),
    "mlp2d": BundledModel(MLPVelocity, (2,), "an MLP trained on gmm2d samples", "scripts/train_mlp2d.py"),
    "digits_dit": BundledModel(
        DiT, DIGITS_SHAPE, "a DiT for the 8x8 scikit-learn digits", "scripts/train_digits_dit.py"
    ),
    "digits_classifier": BundledModel(
        DigitsClassifier,
        DIGITS_SHAPE,
        "the digits CNN whose features define metrics.digits_fd",
        "scripts/train_digits_classifier.py",
        velocity=False,
    ),
}


def bundled_models() -> list[str]:
    """Names accepted by :func:`load_bundled`, sorted."""
    return sorted(BUNDLED)


def bundled_velocities() -> dict[str, tuple[int, ...]]:
    """{name: one sample's shape} of the bundled velocity models (what ``--model`` accepts by name), sorted.

    Example:
        >>> bundled_velocities()["digits_dit"]
        (1, 8, 8)
    """
    return {name: BUNDLED[name].shape for name in sorted(BUNDLED) if BUNDLED[name].velocity}


def weights_path(name: str) -> Path:
    """Path of the shipped weight file of a trained bundled model (it may not exist yet)."""
    if name not in BUNDLED or BUNDLED[name].analytic:
        trained = sorted(n for n, m in BUNDLED.items() if not m.analytic)
        raise ValueError(f"{name!r} has no weight file; trained bundled models: {trained}")
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
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled model {name!r}; available: {bundled_models()}")
    if BUNDLED[name].analytic:
        if weights is not None:
            raise ValueError(f"{name!r} is analytic: it has no weights to load from {weights}")
        model = BUNDLED[name].build()
    else:
        cls, script = BUNDLED[name].build, BUNDLED[name].script
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
    model = model.to(device=device or "cpu").eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model
