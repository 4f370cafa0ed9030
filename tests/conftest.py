"""Test-session environment only: without a CUDA device, Triton kernels run through the Triton interpreter.

Triton reads ``TRITON_INTERPRET`` when a kernel is decorated, i.e. when ``boss_fast.kernels`` is first
imported, so it is set here, before any test module imports the package.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from boss_fast.models import load_bundled  # noqa: E402  (after TRITON_INTERPRET is set)


@pytest.fixture(scope="module")
def digits_dit():
    """The bundled 8x8 digits DiT, loaded once per test module."""
    return load_bundled("digits_dit")
