"""Linear layers as functions: ``F.linear``, and for a decode step's rows on CUDA the Triton
kernels (matrix-vector, tensor-core tiles) for the shapes where they read the weights faster than
cuBLAS, plus the SwiGLU MLP's gate and up products fused in one pass."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .derived import derived
from .norm import silu_mul
from .triton_gate import pdl_supported, use_triton


def kernel_for(x: Tensor, *weights: Tensor) -> str | None:
    """Which Triton kernel beats cuBLAS for this product (``"gemv"``, ``"dot"``) or None, as
    measured on an H200 inside CUDA graphs at Hymba-1.5B's decode shapes
    (``benchmarks/linear_gpu.py``, benchmarks/RESULTS.md; the Triton kernels launched with PDL,
    which lets each start while the previous kernel ends, a cuBLAS kernel not). One row: the
    tensor-core kernel for the fused SwiGLU and very wide outputs (N >= 16384, the LM head); the
    matrix-vector kernel for short rows (K <= 512) and few long rows (1024 <= N <= K: the output
    and down projections); the rest (the input and x projections) on tensor cores with PDL, on
    cuBLAS without. Two to four rows: the tensor-core kernel unless a long row
    (K > 512) gives a wider, not very wide output (the input projection). Up to 128 rows: the
    tensor-core kernel for the fused SwiGLU and very wide outputs. Weights of x's width and dtype
    (and of one shape, gated) with unit column stride, no empty product, no autocast (which would
    change the product's dtype)."""
    if torch.is_autocast_enabled(x.device.type) or x.dim() == 0:
        return None
    *lead, k = x.shape
    n = weights[0].shape[0]
    if not all(w.shape == (n, k) and w.dtype == x.dtype and w.stride(-1) == 1 for w in weights):
        return None
    rows, gated, wide = math.prod(lead), len(weights) == 2, n >= 16384
    if not (rows and n and k):
        return None
    if rows == 1:
        if gated or wide:
            return "dot"
        if k <= 512 or 1024 <= n <= k:
            return "gemv"
        return "dot" if pdl_supported(x.device) else None
    if rows <= 4:
        return None if 512 < k < n < 16384 and not gated else "dot"
    return "dot" if rows <= 128 and (gated or wide) else None


def linear(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, residual: Tensor | None = None, accumulate: bool = False
) -> Tensor:
    """``F.linear(x, weight, bias)``, plus ``residual`` (added to the product rounded to x's dtype,
    as ``residual + F.linear(...)`` does): a Triton kernel for a decode step's rows on CUDA
    without autograd, where it is faster than cuBLAS (:func:`kernel_for`; the residual added in its
    epilogue, if it has the output's shape and dtype); cuBLAS otherwise.

    ``accumulate=True``: the caller gives ``residual`` up. On the cuBLAS path without autograd the
    product is then added into it in place (``residual += x Wᵀ``, one rounding of the sum, no
    separate add kernel) and ``residual`` is returned."""
    if use_triton(x, weight, bias, residual) and _fits_epilogue(x, weight, bias, residual):
        kernel = kernel_for(x, weight)
        if kernel is not None:
            from . import linear_triton

            run = linear_triton.linear_triton if kernel == "gemv" else linear_triton.linear_dot
            return run(x, weight, bias, residual)
    if accumulate and _adds_in_place(x, weight, bias, residual):
        n, k = weight.shape
        residual.view(-1, n).addmm_(x.reshape(-1, k), weight.t())
        return residual
    y = _product(x, weight, bias)
    return y if residual is None else residual + y


def _product(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` through cuBLAS: on padded widths where they are misaligned,
    with float32 weight gradients under autocast."""
    if _misaligned(x, weight):
        return _aligned_linear(x, weight, bias)
    if _float32_weight_grad(x, weight, bias):
        return _AutocastLinear.apply(x, weight, bias, torch.get_autocast_dtype("cuda"))
    return F.linear(x, weight, bias)


class _AutocastLinear(torch.autograd.Function):
    """``F.linear`` of float32 parameters under autocast, as autocast runs it (inputs cast to the
    autocast dtype), but with the parameters' gradients formed in float32 by the matrix product
    itself. Autocast forms them in its dtype and casts them: per weight a bf16 write and read
    and a float32 write more, and a rounding less here."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
        with torch.autocast("cuda", enabled=False):
            x16, w16 = x.to(dtype), weight.to(dtype)
            y = F.linear(x16, w16, None if bias is None else bias.to(dtype))
        ctx.save_for_backward(x16, w16)
        ctx.x_dtype, ctx.has_bias = x.dtype, bias is not None
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x16, w16 = ctx.saved_tensors
        dx = dw = db = None
        rows = dy.reshape(-1, dy.shape[-1])
        if ctx.needs_input_grad[0]:
            dx = (dy @ w16).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            dw = torch.mm(rows.t(), x16.reshape(-1, x16.shape[-1]), out_dtype=torch.float32)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = rows.sum(0, dtype=torch.float32)
        return dx, dw, db, None


# torch.mm(a, b, out_dtype=torch.float32) of bf16/fp16 inputs on CUDA (PyTorch 2.8 and later)
_MM_WRITES_FLOAT32 = torch.torch_version.TorchVersion(torch.__version__) >= (2, 8)


def _float32_weight_grad(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether :class:`_AutocastLinear` runs this product: CUDA autocast to a 16-bit dtype, float32
    parameters that autograd records, and a PyTorch whose matrix product writes float32 from
    16-bit inputs."""
    if not (x.is_cuda and torch.is_autocast_enabled("cuda") and torch.is_grad_enabled()):
        return False
    if torch.get_autocast_dtype("cuda") not in (torch.bfloat16, torch.float16):
        return False
    params = [weight] if bias is None else [weight, bias]
    if any(p.dtype != torch.float32 for p in params) or not any(p.requires_grad for p in params):
        return False
    return x.dim() >= 2 and _MM_WRITES_FLOAT32


# cuBLAS's fast Hopper kernels read and write their matrices by 16-byte rows: a product whose
# input width or output width is not a multiple of 8 elements (Hymba's x_proj output of
# dt_rank + 2·d_state = 132 columns, dt_proj's input of dt_rank = 100) falls back to slower
# kernels. From this many rows on (prefill, training), such products run on zero-padded widths.
ALIGN_ROWS = 256
ALIGN = 8


def _misaligned(x: Tensor, weight: Tensor) -> bool:
    n, k = weight.shape
    return x.is_cuda and x.dim() >= 2 and (n % ALIGN or k % ALIGN) and x.numel() >= ALIGN_ROWS * k


def _aligned_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, weight, bias)`` computed on widths padded with zeros to multiples of
    ``ALIGN``: the result is a view of a wider output (its rows 16-byte aligned)."""
    n, k = weight.shape
    pad_n, pad_k = -n % ALIGN, -k % ALIGN
    if pad_k:
        x = F.pad(x, (0, pad_k))
    # the weight and bias padded once (and again only after they change), not at every call
    weight = derived(weight, f"padded {pad_k} {pad_n}", lambda w: F.pad(w, (0, pad_k, 0, pad_n)))
    if bias is not None and pad_n:
        bias = derived(bias, f"padded {pad_n}", lambda b: F.pad(b, (0, pad_n)))
    y = F.linear(x, weight, bias)
    return y[..., :n] if pad_n else y


def _adds_in_place(x: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor | None) -> bool:
    """Whether ``residual += x Wᵀ`` can run as one in-place cuBLAS product: CUDA, no bias, one dtype,
    a contiguous residual of the output's shape, aligned widths, no autocast and no autograd."""
    if residual is None or bias is not None or not x.is_cuda or torch.is_autocast_enabled("cuda"):
        return False
    n, k = weight.shape
    if not (x.dtype == weight.dtype == residual.dtype and residual.is_contiguous()):
        return False
    if residual.shape != (*x.shape[:-1], n) or n % ALIGN or k % ALIGN:
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, residual)))


def _fits_epilogue(x: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor | None) -> bool:
    """Whether the kernels' epilogue takes this bias (contiguous, one per output feature) and
    residual (exactly the output's shape, no broadcasting), both in x's dtype."""
    n = weight.shape[0]
    if bias is not None and (bias.dtype != x.dtype or bias.shape != (n,) or bias.stride(0) != 1):
        return False
    return residual is None or (residual.dtype == x.dtype and residual.shape == (*x.shape[:-1], n))


def swiglu(x: Tensor, gate_weight: Tensor, up_weight: Tensor) -> Tensor:
    """``silu(x Wgᵀ) · (x Wuᵀ)``, the SwiGLU MLP before its down projection (one kernel under the
    conditions of :func:`linear`, with the same roundings as the unfused form)."""
    if use_triton(x, gate_weight, up_weight) and kernel_for(x, gate_weight, up_weight) is not None:
        from .linear_triton import swiglu_dot

        return swiglu_dot(x, gate_weight, up_weight)
    return silu_mul(_product(x, gate_weight), _product(x, up_weight))
