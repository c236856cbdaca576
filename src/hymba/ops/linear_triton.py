"""Matrix-vector products for a few rows (decode at small batch) in Triton, inference only.

For one activation row cuBLAS reads some of a decode step's weights slowly (the output and down
projections at 1.3-1.8 TB/s on an H200; short rows through a split-K kernel plus a reduction
kernel). Here each program owns ``BN`` output features: it streams their weight
rows once, ``BK`` columns at a time, multiplies them with every activation row in float32 and sums
at the end. The gated form computes SiLU(x Wgᵀ) · (x Wuᵀ) (the SwiGLU MLP's first half) in one
pass, with the reference's roundings of both products and of the SiLU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_gate import num_sms

# Tuning knobs, chosen on an H200 with benchmarks/linear_gpu.py: columns per step (None: 512 for
# rows of 2048 or more, else 128), the least number of programs to aim for (as a multiple of the
# SM count) and warps. (Pipeline stages would change nothing: Triton pipelines only loads that
# feed a dot, so the kernel prefetches the next tile itself.)
BLOCK_K = None
WAVES = 4
NUM_WARPS = 4
TILE = 4096


@triton.jit
def _weight_tiles(w_rows, w2_rows, n_ok, cols, k0, K, EVEN_K: tl.constexpr, GATED: tl.constexpr):
    """The (BN, BK) weight tiles at column ``k0`` (zeros past K; the second one only if GATED)."""
    mask = n_ok[:, None] & (k0 < K) if EVEN_K else n_ok[:, None] & (k0 + cols < K)[None, :]
    w = tl.load(w_rows + k0, mask=mask, other=0.0, eviction_policy="evict_first")
    w2 = w
    if GATED:
        w2 = tl.load(w2_rows + k0, mask=mask, other=0.0, eviction_policy="evict_first")
    return w, w2


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, w2_ptr, bias_ptr, y_ptr, M, N, K, sx_m, sw_n, sw2_n, sy_m,
    ROWS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, EVEN_K: tl.constexpr,
    HAS_BIAS: tl.constexpr, GATED: tl.constexpr,
):
    n = tl.program_id(0) * BN + tl.arange(0, BN)
    n_ok = n < N
    rows = tl.arange(0, ROWS)
    row_ok = rows < M
    cols = tl.arange(0, BK)
    w_rows = w_ptr + n.to(tl.int64)[:, None] * sw_n + cols[None, :]
    w2_rows = w2_ptr + n.to(tl.int64)[:, None] * sw2_n + cols[None, :]
    x_rows = x_ptr + rows[:, None] * sx_m + cols[None, :]
    acc = tl.zeros((ROWS, BN, BK), tl.float32)
    acc2 = tl.zeros((ROWS, BN, BK), tl.float32)
    # the weights of the next step are loaded before this step's products (a prefetch the
    # compiler does not do by itself for loads that feed no dot)
    w, w2 = _weight_tiles(w_rows, w2_rows, n_ok, cols, 0, K, EVEN_K, GATED)
    for k0 in range(0, K, BK):
        x_mask = row_ok[:, None] if EVEN_K else row_ok[:, None] & (k0 + cols < K)[None, :]
        x = tl.load(x_rows + k0, mask=x_mask, other=0.0).to(tl.float32)[:, None, :]
        w_now, w2_now = w, w2
        w, w2 = _weight_tiles(w_rows, w2_rows, n_ok, cols, k0 + BK, K, EVEN_K, GATED)
        acc += w_now.to(tl.float32)[None, :, :] * x
        if GATED:
            acc2 += w2_now.to(tl.float32)[None, :, :] * x
    y = tl.sum(acc, axis=2)
    if HAS_BIAS:
        y += tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out_ty = y_ptr.dtype.element_ty
    if GATED:  # the reference rounds both products and the SiLU to the output dtype
        g = y.to(out_ty, fp_downcast_rounding="rtne").to(tl.float32)
        u = tl.sum(acc2, axis=2).to(out_ty, fp_downcast_rounding="rtne").to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(out_ty, fp_downcast_rounding="rtne").to(tl.float32)
        y = act * u
    tl.store(y_ptr + rows[:, None] * sy_m + n[None, :], y.to(out_ty, fp_downcast_rounding="rtne"),
             mask=row_ok[:, None] & n_ok[None, :])


def _launch(x: Tensor, weight: Tensor, weight2: Tensor | None, bias: Tensor | None,
            block_k: int | None, waves: int, num_warps: int) -> Tensor:
    *lead, k = x.shape
    n = weight.shape[0]
    rows = x.reshape(-1, k)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    m = rows.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m and n:
        rows_p = triton.next_power_of_2(m)
        if block_k is None:
            block_k = 512 if k >= 2048 else 128
        bk = min(block_k, max(16, triton.next_power_of_2(k)))
        # the widest block of output features that still gives every SM ``waves`` programs, with
        # at most TILE float32 accumulators per program (32 a thread at 4 warps)
        most = max(1, TILE // (bk * rows_p * (1 if weight2 is None else 2)))
        per_program = max(1, n // (waves * num_sms(x.device)))
        bn = min(1 << (per_program.bit_length() - 1), most)
        _gemv_kernel[(triton.cdiv(n, bn),)](
            rows, weight, weight if weight2 is None else weight2, weight if bias is None else bias, y,
            m, n, k, rows.stride(0), weight.stride(0), weight.stride(0) if weight2 is None else weight2.stride(0),
            y.stride(0), ROWS=rows_p, BN=bn, BK=bk, EVEN_K=k % bk == 0, HAS_BIAS=bias is not None,
            GATED=weight2 is not None, num_warps=num_warps,
        )
    return y.view(*lead, n)


def linear_triton(x: Tensor, weight: Tensor, bias: Tensor | None = None, block_k: int | None = BLOCK_K,
                  waves: int = WAVES, num_warps: int = NUM_WARPS) -> Tensor:
    """``F.linear(x, weight, bias)`` for a few rows of ``x`` (at most four is sensible) and a weight
    with unit column stride; the keyword arguments are the kernel's tuning knobs."""
    return _launch(x, weight, None, bias, block_k, waves, num_warps)


def swiglu_triton(x: Tensor, gate_weight: Tensor, up_weight: Tensor, block_k: int | None = BLOCK_K,
                  waves: int = WAVES, num_warps: int = NUM_WARPS) -> Tensor:
    """``F.silu(F.linear(x, gate_weight)) * F.linear(x, up_weight)`` in one kernel, under the same
    conditions as :func:`linear_triton`."""
    return _launch(x, gate_weight, up_weight, None, block_k, waves, num_warps)
