"""Linear layers as functions: ``F.linear``, and for a decode step's few rows on CUDA a Triton
matrix-vector kernel for the shapes where it reads the weights faster than cuBLAS (plus the
SwiGLU MLP's gate and up products fused in one pass)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .norm import silu_mul
from .triton_gate import use_triton


def _triton_wins(x: Tensor, *weights: Tensor) -> bool:
    """Whether the Triton kernel beats cuBLAS here, as measured on an H200 inside CUDA graphs
    (``benchmarks/linear_gpu.py``, benchmarks/RESULTS.md): for one row, the fused SwiGLU, short
    rows (K <= 512: cuBLAS adds a split-K reduction kernel), few long rows (1024 <= N <= K: the
    output and down projections) and very wide outputs (N >= 16384: the LM head); for two to four
    rows only the very wide outputs. Weights in x's dtype with unit column stride, no autocast
    (which would change the product's dtype)."""
    if torch.is_autocast_enabled(x.device.type):
        return False
    if not all(w.dtype == x.dtype and w.stride(-1) == 1 for w in weights):
        return False
    rows, (n, k) = x.numel() // max(1, x.shape[-1]), weights[0].shape
    if rows == 1:
        return len(weights) == 2 or k <= 512 or 1024 <= n <= k or n >= 16384
    return 1 < rows <= 4 and n >= 16384


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``: a Triton kernel for a decode step's few rows on CUDA without
    autograd, where it is faster than cuBLAS; cuBLAS otherwise."""
    if use_triton(x, weight, bias) and _triton_wins(x, weight) and (bias is None or bias.dtype == x.dtype):
        from .linear_triton import linear_triton

        return linear_triton(x, weight, bias)
    return F.linear(x, weight, bias)


def swiglu(x: Tensor, gate_weight: Tensor, up_weight: Tensor) -> Tensor:
    """``silu(x Wgᵀ) · (x Wuᵀ)``, the SwiGLU MLP before its down projection (one kernel under the
    conditions of :func:`linear`, with the same roundings as the unfused form)."""
    if use_triton(x, gate_weight, up_weight) and _triton_wins(x, gate_weight, up_weight):
        from .linear_triton import swiglu_triton

        return swiglu_triton(x, gate_weight, up_weight)
    return silu_mul(F.linear(x, gate_weight), F.linear(x, up_weight))
