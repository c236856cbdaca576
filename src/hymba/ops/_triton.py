"""Helpers shared by the Triton kernels of several ops: programmatic dependent launch, the
softplus, cutting a sequence into segments.

Programmatic dependent launch (PDL) for the decode kernels, on Hopper and later GPUs.

A CUDA-graph decode step is a chain of ~500 short kernels; between two of them the GPU idles while
the next one launches and ramps up. With PDL a kernel is launched while its predecessor still runs:
it does the work that needs none of its predecessor's output (index math, loading weights), then
waits at :func:`wait_for_producers` for the predecessor to finish and its writes to be visible,
and lets its own successor launch early in turn.

The rule every kernel launched this way follows: before ``wait_for_producers`` it touches nothing
but read-only inputs (weights); every other load and every store comes after it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from .switches import pdl_supported


@triton.jit
def wait_for_producers(PDL: tl.constexpr):
    """Wait until the previous kernel has finished and its writes are visible, then let the next
    kernel launch (both no-ops without PDL)."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


def pdl_launch(device: torch.device, copied: bool = False) -> dict:
    """The launch arguments for a kernel with a ``PDL`` constexpr: PDL on for CUDA devices that
    support it (see :func:`hymba.ops.switches.pdl_supported`), off elsewhere, and off when
    ``copied``: an input the kernel reads before its wait was just copied by the previous kernel."""
    on = pdl_supported(device) and not copied
    return dict(PDL=on, launch_pdl=on)


def early_inputs(*tensors: torch.Tensor | None) -> tuple[list[torch.Tensor | None], bool]:
    """The inputs a kernel reads before its wait, made contiguous, and whether any had to be
    copied (then the kernel must launch without PDL: see :func:`pdl_launch`)."""
    copied = any(t is not None and not t.is_contiguous() for t in tensors)
    return [None if t is None else t.contiguous() for t in tensors], copied



@triton.jit
def softplus(x):
    """F.softplus with threshold 20 (the identity above it)."""
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x))))


def split_steps(length: int, count: int, chunk: int) -> tuple[int, int]:
    """``length`` steps cut into about ``count`` segments of a whole number of ``chunk`` steps:
    (number of segments, segment length)."""
    seg_len = triton.cdiv(triton.cdiv(max(length, 1), count), chunk) * chunk
    return triton.cdiv(max(length, 1), seg_len), seg_len
