"""RMSNorm forward and the SwiGLU gate in Triton (inference only): one program per row, float32
statistics, the same roundings as the PyTorch references."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _normed_part(x32, w_ptr, cols, lo, hi, eps, x_dtype):
    """RMS-normalise the columns [lo, hi) of a float32 row (weight ``w_ptr``); zeros elsewhere."""
    inside = (cols >= lo) & (cols < hi)
    sq = tl.where(inside, x32 * x32, 0.0)
    inv = tl.math.rsqrt(tl.sum(sq, axis=0) / (hi - lo) + eps)
    # the reference rounds to x's dtype here (to nearest even, as PyTorch casts)
    normed = (x32 * inv).to(x_dtype, fp_downcast_rounding="rtne").to(tl.float32)
    w = tl.load(w_ptr + (cols - lo), mask=inside, other=0.0).to(tl.float32)
    return tl.where(inside, w * normed, 0.0)


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, n_cols, stride_x, stride_out, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + row * stride_x + cols, mask=cols < n_cols, other=0.0)
    y = _normed_part(x.to(tl.float32), w_ptr, cols, 0, n_cols, eps, x.dtype)
    out = y.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
    tl.store(out_ptr + row * stride_out + cols, out, mask=cols < n_cols)


def rms_norm_triton(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Same result as :func:`hymba.ops.norm.rms_norm_reference` (x: (..., D), weight: (D,))."""
    shape, d = x.shape, x.shape[-1]
    rows = x.reshape(-1, d)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if rows.shape[0]:
        block = triton.next_power_of_2(d)
        _rms_norm_kernel[(rows.shape[0],)](
            rows, weight.contiguous(), out, d, rows.stride(0), out.stride(0), eps,
            BLOCK=block, num_warps=min(16, max(1, block // 256)),
        )
    return out.view(shape)


@triton.jit
def _rms_norm_parts_kernel(x_ptr, w1_ptr, w2_ptr, w3_ptr, out_ptr, s1, s2, s3, stride_x, stride_out, eps,
                           BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    width = s1 + s2 + s3
    x = tl.load(x_ptr + row * stride_x + cols, mask=cols < width, other=0.0)
    x32 = x.to(tl.float32)
    y = _normed_part(x32, w1_ptr, cols, 0, s1, eps, x.dtype)
    y += _normed_part(x32, w2_ptr, cols, s1, s1 + s2, eps, x.dtype)
    y += _normed_part(x32, w3_ptr, cols, s1 + s2, width, eps, x.dtype)
    out = y.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
    tl.store(out_ptr + row * stride_out + cols, out, mask=cols < width)


def rms_norm_parts_triton(x: Tensor, sizes: tuple[int, int, int], weights: tuple[Tensor, Tensor, Tensor],
                          eps: float) -> tuple[Tensor, ...]:
    """Same as :func:`hymba.ops.norm.rms_norm_parts`; returns views of one output tensor."""
    shape, width = x.shape, x.shape[-1]
    if sum(sizes) != width or min(sizes) < 1:
        raise ValueError(f"parts {sizes} do not split a last dimension of {width}")
    rows = x.reshape(-1, width)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    dtype = torch.promote_types(x.dtype, weights[0].dtype)
    out = torch.empty(rows.shape, dtype=dtype, device=x.device)
    if rows.shape[0]:
        _rms_norm_parts_kernel[(rows.shape[0],)](
            rows, *(w.contiguous() for w in weights), out, *sizes, rows.stride(0), out.stride(0), eps,
            BLOCK=triton.next_power_of_2(width),
        )
    return out.view(shape).split(list(sizes), -1)


@triton.jit
def _silu_mul_kernel(g_ptr, u_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    keep = offs < n
    g = tl.load(g_ptr + offs, mask=keep, other=0.0)
    u = tl.load(u_ptr + offs, mask=keep, other=0.0).to(tl.float32)
    g32 = g.to(tl.float32)
    act = (g32 / (1.0 + tl.exp(-g32))).to(g.dtype, fp_downcast_rounding="rtne").to(tl.float32)
    tl.store(out_ptr + offs, (act * u).to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=keep)


def silu_mul_triton(gate: Tensor, up: Tensor) -> Tensor:
    """Same as ``F.silu(gate) * up`` for tensors of one shape and dtype."""
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)
    n = gate.numel()
    block = 1024
    if n:
        _silu_mul_kernel[(triton.cdiv(n, block),)](gate, up, out, n, BLOCK=block, num_warps=4)
    return out
