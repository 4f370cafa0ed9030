"""Test-session environment only: without a CUDA device, Triton kernels run through the Triton interpreter.

Triton reads ``TRITON_INTERPRET`` when a kernel is decorated, i.e. when ``boss_fast.kernels`` is first
imported, so it is set here, before any test module imports the package.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
