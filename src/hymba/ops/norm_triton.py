"""RMSNorm forward (alone, over three parts, after a residual add, the mean of two norms) and the
SwiGLU gate in Triton (inference only): one program per row, float32 statistics, the same roundings
as the PyTorch references."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .pdl_triton import pdl_launch, wait_for_producers


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


def _rows(x: Tensor) -> Tensor:
    """``x`` as (rows, last dim) with unit column stride (a view where possible)."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _row_launch(width: int, device: torch.device) -> dict:
    """Block, warps and PDL of a one-row-per-program kernel over rows of ``width`` columns."""
    block = triton.next_power_of_2(width)
    return dict(BLOCK=block, num_warps=min(16, max(1, block // 256)), **pdl_launch(device))


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, n_cols, stride_x, stride_out, eps, BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_producers(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + row * stride_x + cols, mask=cols < n_cols, other=0.0)
    y = _normed_part(x.to(tl.float32), w_ptr, cols, 0, n_cols, eps, x.dtype)
    out = y.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
    tl.store(out_ptr + row * stride_out + cols, out, mask=cols < n_cols)


def rms_norm_triton(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Same result as :func:`hymba.ops.norm.rms_norm_reference` (x: (..., D), weight: (D,))."""
    shape, d = x.shape, x.shape[-1]
    rows = _rows(x)
    out = torch.empty(rows.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if rows.shape[0]:
        _rms_norm_kernel[(rows.shape[0],)](
            rows, weight.contiguous(), out, d, rows.stride(0), out.stride(0), eps, **_row_launch(d, x.device),
        )
    return out.view(shape)


@triton.jit
def _add_rms_norm_kernel(x_ptr, d_ptr, w_ptr, sum_ptr, out_ptr, n_cols, stride_x, stride_d, stride_sum,
                         stride_out, eps, BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_producers(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    keep = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=keep, other=0.0)
    d = tl.load(d_ptr + row * stride_d + cols, mask=keep, other=0.0)
    total = (x.to(tl.float32) + d.to(tl.float32)).to(x.dtype, fp_downcast_rounding="rtne")
    tl.store(sum_ptr + row * stride_sum + cols, total, mask=keep)
    y = _normed_part(total.to(tl.float32), w_ptr, cols, 0, n_cols, eps, x.dtype)
    tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"),
             mask=keep)


def add_rms_norm_triton(x: Tensor, delta: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Same as :func:`hymba.ops.norm.add_rms_norm_reference` for ``x`` and ``delta`` of one
    shape and dtype."""
    shape, d = x.shape, x.shape[-1]
    xr, dr = _rows(x), _rows(delta)
    total = torch.empty(xr.shape, dtype=x.dtype, device=x.device)
    out = torch.empty(xr.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if xr.shape[0]:
        _add_rms_norm_kernel[(xr.shape[0],)](
            xr, dr, weight.contiguous(), total, out, d, xr.stride(0), dr.stride(0), total.stride(0),
            out.stride(0), eps, **_row_launch(d, x.device),
        )
    return total.view(shape), out.view(shape)


@triton.jit
def _mean_of_norms_kernel(a_ptr, b_ptr, wa_ptr, wb_ptr, out_ptr, n_cols, stride_a, stride_b, stride_out, eps,
                          BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_producers(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    keep = cols < n_cols
    dtype = out_ptr.dtype.element_ty
    a = tl.load(a_ptr + row * stride_a + cols, mask=keep, other=0.0)
    b = tl.load(b_ptr + row * stride_b + cols, mask=keep, other=0.0)
    # each norm, their sum and the halving rounded to the output dtype, as the reference does
    ya = _normed_part(a.to(tl.float32), wa_ptr, cols, 0, n_cols, eps, a.dtype).to(dtype, fp_downcast_rounding="rtne")
    yb = _normed_part(b.to(tl.float32), wb_ptr, cols, 0, n_cols, eps, b.dtype).to(dtype, fp_downcast_rounding="rtne")
    total = (ya.to(tl.float32) + yb.to(tl.float32)).to(dtype, fp_downcast_rounding="rtne")
    tl.store(out_ptr + row * stride_out + cols, (total.to(tl.float32) * 0.5).to(dtype), mask=keep)


def mean_of_rms_norms_triton(a: Tensor, b: Tensor, weight_a: Tensor, weight_b: Tensor, eps: float) -> Tensor:
    """Same as :func:`hymba.ops.norm.mean_of_rms_norms_reference` for inputs of one shape and
    dtype and weights of one dtype."""
    shape, d = a.shape, a.shape[-1]
    ar, br = _rows(a), _rows(b)
    out = torch.empty(ar.shape, dtype=torch.promote_types(a.dtype, weight_a.dtype), device=a.device)
    if ar.shape[0]:
        _mean_of_norms_kernel[(ar.shape[0],)](
            ar, br, weight_a.contiguous(), weight_b.contiguous(), out, d, ar.stride(0), br.stride(0),
            out.stride(0), eps, **_row_launch(d, a.device),
        )
    return out.view(shape)


@triton.jit
def _rms_norm_parts_kernel(x_ptr, w1_ptr, w2_ptr, w3_ptr, out_ptr, s1, s2, s3, stride_x, stride_out, eps,
                           BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_producers(PDL)
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
    rows = _rows(x)
    dtype = torch.promote_types(x.dtype, weights[0].dtype)
    out = torch.empty(rows.shape, dtype=dtype, device=x.device)
    if rows.shape[0]:
        _rms_norm_parts_kernel[(rows.shape[0],)](
            rows, *(w.contiguous() for w in weights), out, *sizes, rows.stride(0), out.stride(0), eps,
            BLOCK=triton.next_power_of_2(width), **pdl_launch(x.device),
        )
    return out.view(shape).split(list(sizes), -1)


@triton.jit
def _silu_mul_kernel(g_ptr, u_ptr, out_ptr, n, BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_producers(PDL)
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
        _silu_mul_kernel[(triton.cdiv(n, block),)](gate, up, out, n, BLOCK=block, num_warps=4, **pdl_launch(gate.device))
    return out
