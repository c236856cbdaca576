"""Linear layers as functions: ``F.linear``, and for a decode step's few rows on CUDA a Triton
matrix-vector kernel that reads the weights closer to the copy bandwidth (plus the SwiGLU MLP's
gate and up products fused in one pass)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .norm import silu_mul
from .triton_gate import use_triton


def _few_rows(x: Tensor, *weights: Tensor) -> bool:
    """At most MAX_ROWS rows, weights in x's dtype with unit column stride, no autocast (which
    would change the product's dtype)."""
    from .linear_triton import MAX_ROWS

    if torch.is_autocast_enabled(x.device.type):
        return False
    rows = x.numel() // max(1, x.shape[-1])
    return 0 < rows <= MAX_ROWS and all(w.dtype == x.dtype and w.stride(-1) == 1 for w in weights)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``; one Triton kernel for at most four rows of ``x`` on CUDA
    without autograd (weights in x's dtype), cuBLAS otherwise."""
    if use_triton(x, weight, bias) and _few_rows(x, weight) and (bias is None or bias.dtype == x.dtype):
        from .linear_triton import linear_triton

        return linear_triton(x, weight, bias)
    return F.linear(x, weight, bias)


def swiglu(x: Tensor, gate_weight: Tensor, up_weight: Tensor) -> Tensor:
    """``silu(x Wgᵀ) · (x Wuᵀ)``, the SwiGLU MLP before its down projection (one kernel under the
    conditions of :func:`linear`, with the same roundings as the unfused form)."""
    if use_triton(x, gate_weight, up_weight) and _few_rows(x, gate_weight, up_weight):
        from .linear_triton import swiglu_triton

        return swiglu_triton(x, gate_weight, up_weight)
    return silu_mul(F.linear(x, gate_weight), F.linear(x, up_weight))
