"""Rotary embedding in Triton: each program rotates a block of positions of one (row, head)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._triton import pdl_launch, wait_for_producers

ROWS = 16


@triton.jit
def rotate_half_split(x, rows_ptr, cols, D: tl.constexpr, cos_row, sin_row, mask):
    """``x``, a (rows, D_P) tile loaded from ``rows_ptr + cols``, times its rotary embedding:
    x·cos + [-x2, x1]·sin in float32, rounded to x's dtype. ``cos_row``/``sin_row``: the row's
    tables (D values); ``mask``: which elements of the tile exist. For kernels that rotate heads
    on the way in (decode attention, the K/V store)."""
    first = cols < D // 2
    partner = tl.load(rows_ptr + tl.where(first, cols + D // 2, cols - D // 2)[None, :], mask=mask, other=0.0)
    c = tl.load(cos_row + cols, mask=cols < D, other=0.0).to(tl.float32)
    s = tl.load(sin_row + cols, mask=cols < D, other=0.0).to(tl.float32)
    swapped = tl.where(first[None, :], -partner.to(tl.float32), partner.to(tl.float32))
    return (x.to(tl.float32) * c[None, :] + swapped * s[None, :]).to(x.dtype)


def rotary_tables(rotary: tuple[Tensor, Tensor], b: int, length: int, d: int) -> tuple[Tensor, Tensor, int]:
    """(cos, sin) of shape (1 or b, 1, length, d) as the kernels read them: contiguous, with the
    row stride (0 when one row serves all)."""
    cos, sin = (t.contiguous() for t in rotary)
    if cos.shape != sin.shape or cos.dim() != 4 or cos.shape[1:] != (1, length, d) or cos.shape[0] not in (1, b):
        raise ValueError(f"cos/sin of shape {tuple(cos.shape)} do not fit {b} rows of {length} positions, head dim {d}")
    return cos, sin, cos.stride(0) if cos.shape[0] > 1 else 0


@triton.jit
def _rotary_kernel(
    x_ptr, cos_ptr, sin_ptr, out_ptr, H, L, half,
    sx_b, sx_h, sx_l, sc_b, sc_l, so_b, so_h, so_l,
    ROWS: tl.constexpr, HALF_P: tl.constexpr, TRANSPOSE: tl.constexpr, PDL: tl.constexpr,
):
    """Rotate a block of positions of one (row, head); with TRANSPOSE, by the transposed rotation
    (the backward: the gradient of x from the gradient of the output)."""
    wait_for_producers(PDL)
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    pos = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
    col = tl.arange(0, HALF_P)
    keep = (pos < L)[:, None] & (col < half)[None, :]
    x_row = x_ptr + b * sx_b + h * sx_h + pos[:, None] * sx_l + col[None, :]
    x1 = tl.load(x_row, mask=keep, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + half, mask=keep, other=0.0).to(tl.float32)
    c_row = b * sc_b + pos[:, None] * sc_l + col[None, :]  # cos/sin are [c, c] and [s, s] halves
    c1 = tl.load(cos_ptr + c_row, mask=keep, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + c_row + half, mask=keep, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + c_row, mask=keep, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + c_row + half, mask=keep, other=0.0).to(tl.float32)
    o_row = out_ptr + b * so_b + h * so_h + pos[:, None] * so_l + col[None, :]
    dtype = out_ptr.dtype.element_ty
    if TRANSPOSE:
        tl.store(o_row, (x1 * c1 + x2 * s2).to(dtype), mask=keep)
        tl.store(o_row + half, (x2 * c2 - x1 * s1).to(dtype), mask=keep)
    else:
        tl.store(o_row, (x1 * c1 - x2 * s1).to(dtype), mask=keep)
        tl.store(o_row + half, (x2 * c2 + x1 * s2).to(dtype), mask=keep)


def apply_rotary_triton(x: Tensor, cos: Tensor, sin: Tensor, dtype: torch.dtype | None = None,
                        transpose: bool = False) -> Tensor:
    """Same as :func:`hymba.ops.rotary.reference.apply_rotary_reference`, in ``dtype`` (by default the
    promoted dtype of x and cos; computed in float32 and rounded once). ``transpose``: rotate by
    the transposed rotation instead. Heads that are a transposed (b, L, H, d) view, as split from
    a projection, come back in that memory order (so attention's output can keep it), others
    contiguous."""
    b, h, length, d = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    cos, sin, sc_b = rotary_tables((cos, sin), b, length, d)
    like = dict(dtype=dtype or torch.promote_types(x.dtype, cos.dtype), device=x.device)
    if x.stride(1) < x.stride(2):
        out = torch.empty(b, length, h, d, **like).transpose(1, 2)
    else:
        out = torch.empty(b, h, length, d, **like)
    half = d // 2
    _rotary_kernel[(b * h, triton.cdiv(length, ROWS))](
        x, cos, sin, out, h, length, half,
        x.stride(0), x.stride(1), x.stride(2), sc_b, cos.stride(2), out.stride(0), out.stride(1), out.stride(2),
        ROWS=ROWS, HALF_P=triton.next_power_of_2(half), TRANSPOSE=transpose, **pdl_launch(x.device),
    )
    return out


class _Rotary(torch.autograd.Function):
    """The rotation with its backward (the transposed rotation); no gradient for the tables."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor, dtype: torch.dtype | None) -> Tensor:
        ctx.save_for_backward(cos, sin)
        ctx.x_dtype = x.dtype
        return apply_rotary_triton(x, cos, sin, dtype)

    @staticmethod
    def backward(ctx, dy: Tensor):
        cos, sin = ctx.saved_tensors
        return apply_rotary_triton(dy, cos, sin, ctx.x_dtype, transpose=True), None, None, None


def apply_rotary_train(x: Tensor, cos: Tensor, sin: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """:func:`apply_rotary_triton` with a backward for ``x``."""
    return _Rotary.apply(x, cos, sin, dtype)
