"""When the fused Triton kernels run: CUDA tensors, Triton importable, not switched off.

``HYMBA_TRITON=0`` forces the pure-PyTorch references of the fused RMSNorm and decode kernels
(for debugging; the selective scan has its own switch, ``HYMBA_SCAN_IMPL``). ``HYMBA_TRITON=force``
runs them on any device, which with ``TRITON_INTERPRET=1`` tests them on CPU tensors.
``HYMBA_PDL=0`` launches them without programmatic dependent launch (``ops/pdl_triton.py``).
Nothing here imports Triton on a machine without it.
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


def use_triton(x: Tensor, *others: Tensor | None, differentiable: bool = False) -> bool:
    """True when the fused Triton kernels may run on ``x`` and the ``others`` of the same call:
    ``x`` on a CUDA device in a dtype they compute (float64 stays on the references, the kernels
    compute in float32), and no autograd through any of them unless the kernels have a backward
    (``differentiable``)."""
    switch = os.environ.get("HYMBA_TRITON", "1")
    if switch == "0" or not (x.is_cuda or switch == "force") or x.dtype not in _KERNEL_DTYPES:
        return False
    if not differentiable and needs_grad(x, *others):
        return False
    return triton_importable()


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd records an operation on these tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def capability(device: torch.device) -> tuple[int, int]:
    """A CUDA device's compute capability, looked up once per device (the call costs host time
    on every kernel launch otherwise)."""
    return _capability(device.index if device.index is not None else torch.cuda.current_device())


def pdl_supported(device: torch.device) -> bool:
    """Whether kernels on ``device`` may use programmatic dependent launch: a CUDA device of
    compute capability 9.0 or later (Hopper), not Triton's interpreter, not ``HYMBA_PDL=0``."""
    if device.type != "cuda" or os.environ.get("HYMBA_PDL", "1") == "0" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return capability(device) >= (9, 0)
