"""RMSNorm (alone, over three parts, after a residual add, the mean of two norms) in Triton.
Forward: one program per row, float32 statistics, the same roundings as the PyTorch references
(:mod:`hymba.ops.norm.reference`). Backward (``*_train``, autograd functions): one program per group of rows,
float32 arithmetic throughout (the references round some intermediate gradients to bf16), each
program's share of the weight gradient summed by PyTorch."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._triton import pdl_launch, wait_for_producers
from ..switches import num_sms
from .reference import cast_to


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


def _row_block(width: int) -> dict:
    """Block and warps of a kernel that holds rows of ``width`` columns one at a time."""
    block = triton.next_power_of_2(width)
    return dict(BLOCK=block, num_warps=min(16, max(1, block // 256)))


def _out_dtype(promoted: torch.dtype, wanted: torch.dtype | None) -> tuple[torch.dtype, torch.dtype | None]:
    """The dtype a norm kernel stores its result in, and the dtype to cast it to afterwards (or
    None). The kernels round their float32 result once when they store it, so a float32 result
    asked for in another dtype (a linear layer's input under autocast) is stored in that dtype
    directly: the values of the float32 result cast afterwards."""
    if wanted is None or wanted == promoted:
        return promoted, None
    if promoted == torch.float32:
        return wanted, None
    return promoted, wanted


def _row_launch(width: int, device: torch.device) -> dict:
    """Block, warps and PDL of a one-row-per-program kernel over rows of ``width`` columns."""
    return dict(**_row_block(width), **pdl_launch(device))


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, n_cols, stride_x, stride_out, eps, BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_producers(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + row * stride_x + cols, mask=cols < n_cols, other=0.0)
    y = _normed_part(x.to(tl.float32), w_ptr, cols, 0, n_cols, eps, x.dtype)
    out = y.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
    tl.store(out_ptr + row * stride_out + cols, out, mask=cols < n_cols)


def rms_norm_triton(x: Tensor, weight: Tensor, eps: float, out_dtype: torch.dtype | None = None) -> Tensor:
    """Same result as :func:`hymba.ops.norm.rms_norm_reference` (x: (..., D), weight: (D,)),
    cast to ``out_dtype`` if given."""
    shape, d = x.shape, x.shape[-1]
    rows = _rows(x)
    store, cast = _out_dtype(torch.promote_types(x.dtype, weight.dtype), out_dtype)
    out = torch.empty(rows.shape, dtype=store, device=x.device)
    if rows.shape[0]:
        _rms_norm_kernel[(rows.shape[0],)](
            rows, weight.contiguous(), out, d, rows.stride(0), out.stride(0), eps, **_row_launch(d, x.device),
        )
    return cast_to(out.view(shape), cast)


@triton.jit
def _add_rms_norm_kernel(x_ptr, d_ptr, w_ptr, sum_ptr, out_ptr, n_cols, stride_x, stride_d, stride_sum,
                         stride_out, eps, BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_producers(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    keep = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=keep, other=0.0)
    d = tl.load(d_ptr + row * stride_d + cols, mask=keep, other=0.0)
    sum_dtype = sum_ptr.dtype.element_ty  # x's and delta's promoted dtype, as PyTorch adds them
    total = (x.to(tl.float32) + d.to(tl.float32)).to(sum_dtype, fp_downcast_rounding="rtne")
    tl.store(sum_ptr + row * stride_sum + cols, total, mask=keep)
    y = _normed_part(total.to(tl.float32), w_ptr, cols, 0, n_cols, eps, sum_dtype)
    tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"),
             mask=keep)


def add_rms_norm_triton(x: Tensor, delta: Tensor, weight: Tensor, eps: float, out_dtype: torch.dtype | None = None
                        ) -> tuple[Tensor, Tensor]:
    """Same as :func:`hymba.ops.norm.add_rms_norm_reference` for ``x`` and ``delta`` of one
    shape (the sum in their promoted dtype), the norm cast to ``out_dtype`` if given."""
    shape, d = x.shape, x.shape[-1]
    xr, dr = _rows(x), _rows(delta)
    total = torch.empty(xr.shape, dtype=torch.promote_types(x.dtype, delta.dtype), device=x.device)
    store, cast = _out_dtype(torch.promote_types(total.dtype, weight.dtype), out_dtype)
    out = torch.empty(xr.shape, dtype=store, device=x.device)
    if xr.shape[0]:
        _add_rms_norm_kernel[(xr.shape[0],)](
            xr, dr, weight.contiguous(), total, out, d, xr.stride(0), dr.stride(0), total.stride(0),
            out.stride(0), eps, **_row_launch(d, x.device),
        )
    return total.view(shape), cast_to(out.view(shape), cast)


@triton.jit
def _mean_of_norms_kernel(a_ptr, b_ptr, wa_ptr, wb_ptr, out_ptr, n_cols, stride_a, stride_b, stride_out, eps,
                          ROUND: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """ROUND: the output dtype is the computing (promoted) dtype, which rounds every step;
    otherwise that dtype is float32 and only the result is rounded, to the output dtype."""
    wait_for_producers(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    keep = cols < n_cols
    dtype = out_ptr.dtype.element_ty if ROUND else tl.float32
    a = tl.load(a_ptr + row * stride_a + cols, mask=keep, other=0.0)
    b = tl.load(b_ptr + row * stride_b + cols, mask=keep, other=0.0)
    # each norm, their sum and the halving rounded to the computing dtype, as the reference does
    ya = _normed_part(a.to(tl.float32), wa_ptr, cols, 0, n_cols, eps, a.dtype).to(dtype, fp_downcast_rounding="rtne")
    yb = _normed_part(b.to(tl.float32), wb_ptr, cols, 0, n_cols, eps, b.dtype).to(dtype, fp_downcast_rounding="rtne")
    total = (ya.to(tl.float32) + yb.to(tl.float32)).to(dtype, fp_downcast_rounding="rtne")
    out = (total.to(tl.float32) * 0.5).to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
    tl.store(out_ptr + row * stride_out + cols, out, mask=keep)


def mean_of_rms_norms_triton(a: Tensor, b: Tensor, weight_a: Tensor, weight_b: Tensor, eps: float,
                             out_dtype: torch.dtype | None = None) -> Tensor:
    """Same as :func:`hymba.ops.norm.mean_of_rms_norms_reference` for inputs of one shape and
    dtype and weights of one dtype, cast to ``out_dtype`` if given."""
    shape, d = a.shape, a.shape[-1]
    ar, br = _rows(a), _rows(b)
    promoted = torch.promote_types(a.dtype, weight_a.dtype)
    store, cast = _out_dtype(promoted, out_dtype)
    out = torch.empty(ar.shape, dtype=store, device=a.device)
    if ar.shape[0]:
        _mean_of_norms_kernel[(ar.shape[0],)](
            ar, br, weight_a.contiguous(), weight_b.contiguous(), out, d, ar.stride(0), br.stride(0),
            out.stride(0), eps, ROUND=store == promoted, **_row_launch(d, a.device),
        )
    return cast_to(out.view(shape), cast)


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
    return _rms_norm_parts_joined(x, sizes, weights, eps).split(list(sizes), -1)


def _rms_norm_parts_joined(x: Tensor, sizes: tuple[int, int, int], weights: tuple[Tensor, Tensor, Tensor],
                           eps: float) -> Tensor:
    """The three normalised parts side by side in one tensor of x's shape."""
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
    return out.view(shape)


# ---------------------------------------------------------------- backward (training)

# Programs of a norm's backward per SM: each walks a group of rows, keeping its share of the
# weight gradient in registers.
BWD_PROGRAMS_PER_SM = 4


@triton.jit
def _rms_norm_bwd_kernel(x_ptr, w_ptr, dy_ptr, dres_ptr, dx_ptr, dw_ptr, n_rows, n_cols, rows_per_program,
                         stride_x, stride_dy, stride_dres, stride_dx, eps, scale,
                         HAS_DRES: tl.constexpr, BLOCK: tl.constexpr):
    """Rows [pid·R, (pid+1)·R) of the backward of y = w · round(x · rstd(x)) for the upstream
    gradient ``scale · dy``: dx (plus ``dres``, x's gradient from another path) and this program's
    share of dw (a float32 row of ``dw_ptr``)."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    w = tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(rows_per_program):
        row = pid.to(tl.int64) * rows_per_program + i
        keep = (cols < n_cols) & (row < n_rows)  # the last program's rows may run out
        x = tl.load(x_ptr + row * stride_x + cols, mask=keep, other=0.0)
        x32 = x.to(tl.float32)
        dy = tl.load(dy_ptr + row * stride_dy + cols, mask=keep, other=0.0).to(tl.float32) * scale
        inv = tl.math.rsqrt(tl.sum(x32 * x32, axis=0) / n_cols + eps)
        xhat = x32 * inv
        dw += dy * xhat.to(x.dtype, fp_downcast_rounding="rtne").to(tl.float32)
        g = dy * w
        dx = inv * (g - xhat * (tl.sum(g * xhat, axis=0) / n_cols))
        if HAS_DRES:
            dx += tl.load(dres_ptr + row * stride_dres + cols, mask=keep, other=0.0).to(tl.float32)
        tl.store(dx_ptr + row * stride_dx + cols, dx.to(dx_ptr.dtype.element_ty), mask=keep)
    tl.store(dw_ptr + pid * n_cols + cols, dw, mask=cols < n_cols)


def _norm_backward(x: Tensor, weight: Tensor, dy: Tensor, dx: Tensor, eps: float, scale: float = 1.0,
                   dres: Tensor | None = None) -> Tensor:
    """Write the gradient of ``rms_norm(x, weight)`` for the upstream ``scale · dy`` (plus
    ``dres``) into ``dx``; return the weight's gradient in float32. All rows are (rows, D) with
    unit column stride (column slices of wider rows are fine)."""
    n_rows, d = x.shape
    if n_rows == 0:
        return torch.zeros(d, dtype=torch.float32, device=x.device)
    per = triton.cdiv(n_rows, min(n_rows, BWD_PROGRAMS_PER_SM * num_sms(x.device)))
    programs = triton.cdiv(n_rows, per)
    partial = torch.empty(programs, d, dtype=torch.float32, device=x.device)
    res = dres if dres is not None else dy
    _rms_norm_bwd_kernel[(programs,)](
        x, weight.contiguous(), dy, res, dx, partial, n_rows, d, per,
        x.stride(0), dy.stride(0), res.stride(0), dx.stride(0), eps, scale,
        HAS_DRES=dres is not None, **_row_block(d),
    )
    return partial.sum(0)


class _NormParts(torch.autograd.Function):
    """RMSNorm of consecutive column parts of x, each with its own weight, side by side."""

    @staticmethod
    def forward(ctx, x: Tensor, eps: float, sizes: tuple[int, ...], out_dtype: torch.dtype | None, *weights: Tensor
                ) -> Tensor:
        if len(sizes) == 1:
            out = rms_norm_triton(x, weights[0], eps, out_dtype)
        else:
            out = _rms_norm_parts_joined(x, sizes, weights, eps)
        ctx.save_for_backward(x, *weights)
        ctx.eps, ctx.sizes = eps, sizes
        return out

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, *weights = ctx.saved_tensors
        xr, dyr = _rows(x), _rows(dy)
        dx = torch.empty(xr.shape, dtype=x.dtype, device=x.device)
        grads, lo = [], 0
        for size, w, wanted in zip(ctx.sizes, weights, ctx.needs_input_grad[4:]):
            cols = slice(lo, lo + size)
            dw = _norm_backward(xr[:, cols], w, dyr[:, cols], dx[:, cols], ctx.eps)
            grads.append(dw.to(w.dtype) if wanted else None)
            lo += size
        return dx.view(x.shape), None, None, None, *grads


def rms_norm_train(x: Tensor, weight: Tensor, eps: float, out_dtype: torch.dtype | None = None) -> Tensor:
    """:func:`rms_norm_triton` with a backward."""
    store, cast = _out_dtype(torch.promote_types(x.dtype, weight.dtype), out_dtype)
    return cast_to(_NormParts.apply(x, eps, (x.shape[-1],), store, weight), cast)


def rms_norm_parts_train(x: Tensor, sizes: tuple[int, int, int], weights: tuple[Tensor, Tensor, Tensor],
                         eps: float) -> tuple[Tensor, ...]:
    """:func:`rms_norm_parts_triton` with a backward."""
    return _NormParts.apply(x, eps, tuple(sizes), None, *weights).split(list(sizes), -1)


class _AddRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, delta: Tensor, weight: Tensor, eps: float, out_dtype: torch.dtype | None
                ) -> tuple[Tensor, Tensor]:
        total, out = add_rms_norm_triton(x, delta, weight, eps, out_dtype)
        ctx.save_for_backward(total, weight)
        ctx.eps, ctx.dtypes = eps, (x.dtype, delta.dtype)
        ctx.set_materialize_grads(False)
        return total, out

    @staticmethod
    def backward(ctx, dtotal: Tensor | None, dout: Tensor | None):
        total, weight = ctx.saved_tensors
        dw = None
        if dout is None:
            grad = dtotal
        else:
            rows = _rows(total)
            grad = torch.empty(rows.shape, dtype=total.dtype, device=total.device)
            dw = _norm_backward(rows, weight, _rows(dout), grad, ctx.eps,
                                dres=None if dtotal is None else _rows(dtotal)).to(weight.dtype)
            grad = grad.view(total.shape)
        if grad is None:
            return None, None, None, None, None
        x_dtype, delta_dtype = ctx.dtypes
        return grad.to(x_dtype), grad.to(delta_dtype), dw, None, None


def add_rms_norm_train(x: Tensor, delta: Tensor, weight: Tensor, eps: float, out_dtype: torch.dtype | None = None
                       ) -> tuple[Tensor, Tensor]:
    """:func:`add_rms_norm_triton` with a backward."""
    promoted = torch.promote_types(torch.promote_types(x.dtype, delta.dtype), weight.dtype)
    store, cast = _out_dtype(promoted, out_dtype)
    total, out = _AddRMSNorm.apply(x, delta, weight, eps, store)
    return total, cast_to(out, cast)


class _MeanOfNorms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, weight_a: Tensor, weight_b: Tensor, eps: float,
                out_dtype: torch.dtype | None) -> Tensor:
        ctx.save_for_backward(a, b, weight_a, weight_b)
        ctx.eps = eps
        return mean_of_rms_norms_triton(a, b, weight_a, weight_b, eps, out_dtype)

    @staticmethod
    def backward(ctx, dy: Tensor):
        a, b, weight_a, weight_b = ctx.saved_tensors
        dyr = _rows(dy)
        grads = []
        for x, w in ((a, weight_a), (b, weight_b)):
            rows = _rows(x)
            dx = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
            dw = _norm_backward(rows, w, dyr, dx, ctx.eps, scale=0.5)
            grads.append((dx.view(x.shape), dw.to(w.dtype)))
        (da, dwa), (db, dwb) = grads
        return da, db, dwa, dwb, None, None


def mean_of_rms_norms_train(a: Tensor, b: Tensor, weight_a: Tensor, weight_b: Tensor, eps: float,
                            out_dtype: torch.dtype | None = None) -> Tensor:
    """:func:`mean_of_rms_norms_triton` with a backward."""
    store, cast = _out_dtype(torch.promote_types(a.dtype, weight_a.dtype), out_dtype)
    return cast_to(_MeanOfNorms.apply(a, b, weight_a, weight_b, eps, store), cast)
