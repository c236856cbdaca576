"""Linear layers as functions: the product through PyTorch (cuBLAS on CUDA,
:mod:`hymba.ops.linear.cublas`), and for a decode step's few rows on CUDA two Triton kernels
(:mod:`hymba.ops.linear.triton`: matrix-vector, tensor-core tiles) where they read the weights
faster than cuBLAS. The SwiGLU MLP's gated form of the tensor-core kernel serves
:func:`hymba.ops.swiglu`.

Weights quantized by torchao (:mod:`hymba.ops.linear.quantized`) never reach the plain-weight
paths: int8 weights quantized per output channel take the same two Triton kernels reading int8
(a decode step's rows on CUDA), every other quantized weight and product runs torchao's
``F.linear``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..switches import num_sms, pdl_supported, use_triton
from .cublas import adds_in_place, torch_linear
from .quantized import int8_rows, is_quantized
from .reference import int8_linear_reference, linear_reference

# The Triton kernels' shapes that :func:`kernel_for` reasons with (see linear/triton.py):
DOT_MAX_ROWS = 128  # the tensor-core kernel's largest row tile: more rows would re-read the weight
DOT_TILE_N = 64  # its output features per tile at decode row counts
SHORT_K = 512  # it keeps two blocks of 128 columns per K split: no split of a row this short
FEW_ROWS = 4  # up to here every row shares one pass over the weight in either kernel
WIDE_TILES_PER_SM = 2  # an output this many tiles per SM wide fills the GPU without K splits
GEMV_FEATURES_PER_SM = 8  # output features each SM streams at least in the matrix-vector kernel


def kernel_for(x: Tensor, *weights: Tensor) -> str | None:
    """Which Triton kernel runs this product (``"gemv"``, ``"dot"``), or None for cuBLAS.

    A decode step's product reads a weight far larger than its few rows of activations, so what
    matters is that every SM streams its share of the weight once and nothing waits. cuBLAS picks
    tiles made for many rows: it leaves SMs idle or re-reads where the output is narrow, the rows
    short or the output very wide. The rule, with ``S`` the device's SM count:

    - *wide* outputs (``N >= WIDE_TILES_PER_SM · DOT_TILE_N · S``, the LM head) fill the GPU
      with the tensor-core kernel's tiles alone: that kernel, for up to ``DOT_MAX_ROWS`` rows.
      So does the fused SwiGLU (two weights, one kernel), whatever its width.
    - one row: short rows (``K <= SHORT_K``, which the tensor-core kernel cannot split over
      the SMs) and outputs no wider than the rows but wide enough to give each SM
      ``GEMV_FEATURES_PER_SM`` features (the output and down projections) take the
      matrix-vector kernel, which spreads the output features over the SMs and reads each weight
      row once; the rest (narrow outputs such as the x projection, wider outputs of long rows
      such as the input projection) take the tensor-core kernel, which splits K to fill the SMs,
      where kernels launch early (programmatic dependent launch hides the gaps of a chain of
      small kernels), else cuBLAS.
    - two to ``FEW_ROWS`` rows: the tensor-core kernel, except long rows into a wider but not
      wide output, whose tiles cuBLAS already spreads over the SMs.
    - more rows: cuBLAS (but for the wide and gated products above).

    Only for weights of x's width and dtype (and one shape, gated) with unit column stride, no
    empty product and no autocast (which would change the product's dtype)."""
    if torch.is_autocast_enabled(x.device.type) or x.dim() == 0:
        return None
    *lead, k = x.shape
    n = weights[0].shape[0]
    if not all(w.shape == (n, k) and w.dtype == x.dtype and w.stride(-1) == 1 for w in weights):
        return None
    rows, gated = math.prod(lead), len(weights) == 2
    if not (rows and n and k):
        return None
    sms = num_sms(x.device)
    wide = n >= WIDE_TILES_PER_SM * DOT_TILE_N * sms
    if rows == 1:
        if gated or wide:
            return "dot"
        if k <= SHORT_K or GEMV_FEATURES_PER_SM * sms <= n <= k:
            return "gemv"
        return "dot" if pdl_supported(x.device) else None
    if rows <= FEW_ROWS:
        return None if SHORT_K < k < n and not (gated or wide) else "dot"
    return "dot" if rows <= DOT_MAX_ROWS and (gated or wide) else None


def linear(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, residual: Tensor | None = None, accumulate: bool = False
) -> Tensor:
    """``F.linear(x, weight, bias)``, plus ``residual`` (added to the product rounded to x's dtype,
    as ``residual + F.linear(...)`` does): a Triton kernel for a decode step's rows on CUDA
    without autograd, where it is faster than cuBLAS (:func:`kernel_for`; the residual added in its
    epilogue, if it has the output's shape and dtype); cuBLAS otherwise.

    ``accumulate=True``: the caller gives ``residual`` up. On the cuBLAS path without autograd the
    product is then added into it in place (``residual += x Wᵀ``, one rounding of the sum, no
    separate add kernel) and ``residual`` is returned.

    A torchao quantized weight runs :func:`quantized_linear`."""
    if is_quantized(weight):
        return quantized_linear(x, weight, bias, residual)
    if use_triton(x, weight, bias, residual) and _fits_epilogue(x, weight, bias, residual):
        kernel = kernel_for(x, weight)
        if kernel is not None:
            from . import triton

            run = triton.linear_triton if kernel == "gemv" else triton.linear_dot
            return run(x, weight, bias, residual)
    if accumulate and adds_in_place(x, weight, bias, residual):
        n, k = weight.shape
        residual.view(-1, n).addmm_(x.reshape(-1, k), weight.t())
        return residual
    y = torch_linear(x, weight, bias)
    return y if residual is None else residual + y


def quantized_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, residual: Tensor | None = None
                     ) -> Tensor:
    """:func:`linear` with a torchao quantized ``weight``. An int8 weight with per-output-channel
    scales (:func:`~hymba.ops.linear.quantized.int8_rows`) and up to ``DOT_MAX_ROWS`` rows on CUDA,
    without autograd or autocast, runs the Triton kernels on the int8 data (the matrix-vector kernel
    up to ``FEW_ROWS`` rows, the tensor-core kernel beyond): torchao's own int8 weight-only product
    converts the whole weight to x's dtype at every call, which at a decode step's few rows reads
    and writes more bytes than the unquantized weight. Everything else (int4, prefill rows, CPU)
    runs torchao's ``F.linear``."""
    parts = int8_rows(weight)
    if parts is not None and x.dtype == weight.dtype and use_triton(x, bias, residual):
        q, scale = parts
        rows = math.prod(x.shape[:-1])
        if (0 < rows <= DOT_MAX_ROWS and not torch.is_autocast_enabled(x.device.type)
                and _fits_epilogue(x, q, bias, residual)):
            from . import triton

            run = triton.linear_triton if rows <= FEW_ROWS else triton.linear_dot
            return run(x, q, bias, residual, scale=scale)
    y = F.linear(x, weight, bias)
    return y if residual is None else residual + y


def _fits_epilogue(x: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor | None) -> bool:
    """Whether the kernels' epilogue takes this bias (contiguous, one per output feature) and
    residual (exactly the output's shape, no broadcasting), both in x's dtype."""
    n = weight.shape[0]
    if bias is not None and (bias.dtype != x.dtype or bias.shape != (n,) or bias.stride(0) != 1):
        return False
    return residual is None or (residual.dtype == x.dtype and residual.shape == (*x.shape[:-1], n))


__all__ = ["int8_linear_reference", "is_quantized", "kernel_for", "linear", "linear_reference",
           "quantized_linear", "torch_linear"]
