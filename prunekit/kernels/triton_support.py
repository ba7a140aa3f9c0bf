"""Whether Triton kernels can run here: Triton installed and a CUDA device, or Triton's
CPU interpreter (``TRITON_INTERPRET=1``, which tests use)."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch


def triton_interpreting() -> bool:
    """Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``), on CPU tensors too."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """Triton is installed and can launch: a CUDA device, or the interpreter."""
    return _triton_installed() and (torch.cuda.is_available() or triton_interpreting())
