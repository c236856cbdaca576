"""When the fused Triton kernels run: CUDA tensors, Triton importable, not switched off.

``HYMBA_TRITON=0`` forces the pure-PyTorch references of the fused RMSNorm and decode kernels
(for debugging; the selective scan has its own switch, ``HYMBA_SCAN_IMPL``). ``HYMBA_TRITON=force``
runs them on any device, which with ``TRITON_INTERPRET=1`` tests them on CPU tensors. Nothing
here imports Triton on a machine without it.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor


@functools.cache
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def use_triton(x: Tensor) -> bool:
    """True when ``x`` is on a CUDA device and the fused Triton kernels may run on it (they
    compute in float32, so float64 stays on the references)."""
    switch = os.environ.get("HYMBA_TRITON", "1")
    return ((x.is_cuda or switch == "force") and switch != "0" and x.dtype in _KERNEL_DTYPES
            and triton_importable())
