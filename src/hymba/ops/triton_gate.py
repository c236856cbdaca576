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


@functools.cache
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (4 for a CPU tensor under Triton's interpreter),
    for kernels that size their launch grid to the GPU."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def use_triton(x: Tensor, *others: Tensor | None) -> bool:
    """True when the fused Triton kernels may run on ``x`` and the ``others`` of the same call:
    ``x`` on a CUDA device in a dtype they compute (float64 stays on the references, the kernels
    compute in float32), and no autograd through any of them (the kernels have no backward)."""
    switch = os.environ.get("HYMBA_TRITON", "1")
    if switch == "0" or not (x.is_cuda or switch == "force") or x.dtype not in _KERNEL_DTYPES:
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *others)):
        return False
    return triton_importable()
