"""RMSNorm forward in Triton: one program per row, float32 statistics (inference only)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, n_cols, stride_x, stride_out, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    keep = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=keep, other=0.0)
    x32 = x.to(tl.float32)
    inv = tl.math.rsqrt(tl.sum(x32 * x32, axis=0) / n_cols + eps)
    # the reference rounds to x's dtype here (to nearest even, as PyTorch casts)
    normed = (x32 * inv).to(x.dtype, fp_downcast_rounding="rtne").to(tl.float32)
    w = tl.load(w_ptr + cols, mask=keep, other=0.0).to(tl.float32)
    out = (w * normed).to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
    tl.store(out_ptr + row * stride_out + cols, out, mask=keep)


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
