"""Linear layers for a decode step's rows (1 to 128) in Triton, inference only.

cuBLAS's kernels are made for many rows: at a decode step's few rows some products read their
weight well below the memory's bandwidth (narrow outputs, short rows, very wide outputs), and a
chain of them leaves gaps between kernels. Two kernels, chosen by
:func:`hymba.ops.linear.kernel_for`:

- a matrix-vector kernel: each program owns ``BN`` output features and streams their weight rows
  once, ``BK`` columns at a time, multiplying them with every activation row in float32;
- a tensor-core kernel (``tl.dot``, whose operand loads Triton pipelines): (rows x weight rows)
  tiles, optionally split along K with a second kernel adding the float32 partial sums, and a
  fused SwiGLU form computing SiLU(x Wgᵀ) · (x Wuᵀ) with the reference's roundings of both
  products and of the SiLU.

Both kernels also take int8 weights with one float32 scale per output feature (weights quantized
by torchao, :mod:`hymba.ops.linear.quantized`): the int8 values are converted in registers (exactly:
they fit any float type), the float32 sums multiplied by the scales before the epilogue, so a
decode step reads a byte per weight instead of two. Reference: :func:`int8_linear_reference`.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._triton import pdl_launch, wait_for_producers
from ..switches import num_sms

# Matrix-vector tuning knobs (columns per step, the least number of programs to aim for as a
# multiple of the SM count, warps) for weight rows of at least LONG_ROW columns and for shorter
# ones, at one activation row (the only row count the dispatch gives this kernel). Long rows:
# wide column steps on 8 warps and one wave of programs, each streaming long contiguous runs of
# its rows; short rows: narrow steps and four waves, so that enough loads are in flight while each
# row is short (``benchmarks/linear_gpu.py --gemv-sweep`` times other knobs). Pipeline stages
# would change nothing: Triton pipelines only loads that feed a dot, so the kernel prefetches the
# next tile itself.
LONG_ROW = 2048
LONG_ROW_KNOBS = (1024, 1, 8)
SHORT_ROW_KNOBS = (128, 4, 4)
TILE = 4096


@triton.jit
def _epilogue(acc, acc2, bias_ptr, res_ptrs, out_mask, n, n_ok, out_ty: tl.constexpr, HAS_BIAS: tl.constexpr,
              HAS_RES: tl.constexpr, GATED: tl.constexpr):
    """The output from the float32 sums: plus the bias (callers pass none with GATED), or the
    SwiGLU gate, with the reference's roundings (of both products and of the SiLU; of the product
    before a residual is added)."""
    y = acc
    if HAS_BIAS:
        y += tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if GATED:
        g = y.to(out_ty, fp_downcast_rounding="rtne").to(tl.float32)
        u = acc2.to(out_ty, fp_downcast_rounding="rtne").to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(out_ty, fp_downcast_rounding="rtne").to(tl.float32)
        y = act * u
    y = y.to(out_ty, fp_downcast_rounding="rtne")
    if HAS_RES:
        res = tl.load(res_ptrs, mask=out_mask, other=0.0).to(tl.float32)
        y = (y.to(tl.float32) + res).to(out_ty, fp_downcast_rounding="rtne")
    return y


@triton.jit
def _weight_tile(w_rows, n_ok, cols, k0, K, EVEN_K: tl.constexpr):
    """The (BN, BK) weight tile at column ``k0`` (zeros past K)."""
    mask = n_ok[:, None] & (k0 < K) if EVEN_K else n_ok[:, None] & (k0 + cols < K)[None, :]
    return tl.load(w_rows + k0, mask=mask, other=0.0, eviction_policy="evict_first")


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, scale_ptr, bias_ptr, res_ptr, y_ptr, M, N, K, sx_m, sw_n, sr_m, sy_m,
    ROWS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, EVEN_K: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_RES: tl.constexpr, SCALED: tl.constexpr, PDL: tl.constexpr,
):
    n = tl.program_id(0) * BN + tl.arange(0, BN)
    n_ok = n < N
    rows = tl.arange(0, ROWS)
    row_ok = rows < M
    cols = tl.arange(0, BK)
    w_rows = w_ptr + n.to(tl.int64)[:, None] * sw_n + cols[None, :]
    x_rows = x_ptr + rows[:, None] * sx_m + cols[None, :]
    acc = tl.zeros((ROWS, BN, BK), tl.float32)
    # the weights of the next step are loaded before this step's products (a prefetch the
    # compiler does not do by itself for loads that feed no dot); with PDL the first one while the
    # previous kernel finishes
    w = _weight_tile(w_rows, n_ok, cols, 0, K, EVEN_K)
    wait_for_producers(PDL)
    for k0 in range(0, K, BK):
        x_mask = row_ok[:, None] if EVEN_K else row_ok[:, None] & (k0 + cols < K)[None, :]
        x = tl.load(x_rows + k0, mask=x_mask, other=0.0).to(tl.float32)[:, None, :]
        w_now = w
        w = _weight_tile(w_rows, n_ok, cols, k0 + BK, K, EVEN_K)
        acc += w_now.to(tl.float32)[None, :, :] * x
    y = tl.sum(acc, axis=2)
    if SCALED:  # int8 weights: the sums times each output feature's scale
        y = y * tl.load(scale_ptr + n, mask=n_ok, other=0.0)[None, :]
    out_mask = row_ok[:, None] & n_ok[None, :]
    y = _epilogue(y, y, bias_ptr, res_ptr + rows[:, None] * sr_m + n[None, :], out_mask, n, n_ok,
                  y_ptr.dtype.element_ty, HAS_BIAS, HAS_RES, False)
    tl.store(y_ptr + rows[:, None] * sy_m + n[None, :], y, mask=out_mask)


def _matrix(x: Tensor) -> Tensor:
    """``x`` as a (rows, features) matrix with unit column stride, small enough for the kernels'
    32-bit row offsets (decode-sized: the weights' offsets are 64-bit)."""
    *lead, k = x.shape
    rows = x.reshape(math.prod(lead), k)
    rows = rows if rows.stride(-1) == 1 else rows.contiguous()
    if rows.shape[0] * max(rows.stride(0), k) >= 2**31:
        raise ValueError(f"{rows.shape[0]} rows of {k} are too many for these decode kernels")
    return rows


def _rows(x: Tensor, weight: Tensor) -> Tensor:
    """:func:`_matrix` of ``x``, checked against the weight and for an output that fits the
    32-bit row offsets."""
    k, n = x.shape[-1], weight.shape[0]
    if k == 0 or weight.shape[-1] != k or weight.stride(-1) != 1:
        raise ValueError(f"input of width {k} against a weight {tuple(weight.shape)} with column stride "
                         f"{weight.stride(-1)}: the kernels take width >= 1 and unit column stride")
    rows = _matrix(x)
    if rows.shape[0] * n >= 2**31:
        raise ValueError(f"an output of {rows.shape[0]} x {n} is too large for these decode kernels")
    return rows


def _residual(residual: Tensor | None, m: int, n: int) -> Tensor | None:
    """The residual as an (m, n) matrix with unit column stride (None stays None)."""
    if residual is None:
        return None
    if residual.numel() != m * n or residual.shape[-1] != n:
        raise ValueError(f"the residual has shape {tuple(residual.shape)}, the product ({m}, {n}) rows")
    return _matrix(residual)


def _check_scale(weight: Tensor, scale: Tensor | None) -> None:
    """An int8 weight comes with one contiguous scale per output feature; other weights with none."""
    if scale is None:
        if weight.dtype == torch.int8:
            raise ValueError("an int8 weight needs its per-output-feature scales (scale=)")
        return
    if weight.dtype != torch.int8 or scale.shape != (weight.shape[0],) or scale.stride(0) != 1:
        raise ValueError(f"scale= takes an int8 weight and one contiguous scale per output feature, got a "
                         f"{weight.dtype} weight {tuple(weight.shape)} and scales {tuple(scale.shape)}")


def linear_triton(x: Tensor, weight: Tensor, bias: Tensor | None = None, residual: Tensor | None = None,
                  block_k: int | None = None, waves: int | None = None, num_warps: int | None = None,
                  scale: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` (plus ``residual``) by the matrix-vector kernel, for a few
    rows of ``x`` (the dispatch uses it for one) and a weight with unit column stride; the keyword
    arguments are its knobs (None: ``LONG_ROW_KNOBS`` or ``SHORT_ROW_KNOBS`` by the weight's
    width). With ``scale`` (N,) the weight is int8 and the product is
    :func:`int8_linear_reference`'s."""
    *lead, k = x.shape
    n = weight.shape[0]
    rows = _rows(x, weight)
    _check_scale(weight, scale)
    m = rows.shape[0]
    res = _residual(residual, m, n)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m and n:
        rows_p = triton.next_power_of_2(m)
        defaults = LONG_ROW_KNOBS if k >= LONG_ROW else SHORT_ROW_KNOBS
        block_k, waves, num_warps = (v if v is not None else d for v, d in zip((block_k, waves, num_warps), defaults))
        bk = min(block_k, max(16, triton.next_power_of_2(k)))
        # the widest block of output features that still gives every SM ``waves`` programs, with
        # at most TILE float32 accumulators per program (32 a thread at 4 warps, 16 at 8)
        most = max(1, TILE // (bk * rows_p))
        per_program = max(1, n // (waves * num_sms(x.device)))
        bn = min(1 << (per_program.bit_length() - 1), most)
        _gemv_kernel[(triton.cdiv(n, bn),)](
            rows, weight, y if scale is None else scale, y if bias is None else bias, y if res is None else res,
            y, m, n, k, rows.stride(0), weight.stride(0), 0 if res is None else res.stride(0), y.stride(0),
            ROWS=rows_p, BN=bn, BK=bk, EVEN_K=k % bk == 0, HAS_BIAS=bias is not None, HAS_RES=res is not None,
            SCALED=scale is not None, **pdl_launch(x.device), num_warps=num_warps,
        )
    return y.view(*lead, n)


# Tensor-core kernel: knobs chosen by dot_config; its pipeline buffers (stages - 1 of them) kept
# within SHARED_BYTES (a Hopper SM gives a block up to 227 KB, and the epilogue needs some).
SHARED_BYTES = 192 * 1024


@triton.jit
def _dot_kernel(
    x_ptr, w_ptr, w2_ptr, scale_ptr, scale2_ptr, bias_ptr, res_ptr, y_ptr, part_ptr, M, N, K, k_per_split, plane, up_part,
    sx_m, sw_n, sw2_n, sr_m, sy_m, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT: tl.constexpr,
    EVEN: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, GATED: tl.constexpr, SCALED: tl.constexpr,
    PREC: tl.constexpr, PDL: tl.constexpr,
):
    pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = pid_m * BM + tl.arange(0, BM)
    n = pid_n * BN + tl.arange(0, BN)
    cols = tl.arange(0, BK)
    row_ok, n_ok = rows < M, n < N
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(K, k_begin + k_per_split)
    x_ptrs = x_ptr + rows[:, None] * sx_m + (k_begin + cols)[None, :]
    w_ptrs = w_ptr + n.to(tl.int64)[:, None] * sw_n + (k_begin + cols)[None, :]
    w2_ptrs = w2_ptr + n.to(tl.int64)[:, None] * sw2_n + (k_begin + cols)[None, :]
    wait_for_producers(PDL)
    acc = tl.zeros((BM, BN), tl.float32)
    acc2 = tl.zeros((BM, BN), tl.float32)
    for k0 in range(k_begin, k_end, BK):
        if EVEN:  # K splits into whole blocks and N into whole tiles: no masks but the rows'
            x = tl.load(x_ptrs, mask=row_ok[:, None], other=0.0)
            w = tl.load(w_ptrs, eviction_policy="evict_first")
        else:
            k_ok = (k0 + cols < k_end)[None, :]
            x = tl.load(x_ptrs, mask=row_ok[:, None] & k_ok, other=0.0)
            w = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok, other=0.0, eviction_policy="evict_first")
        if SCALED:  # int8 weights, exact in x's type
            w = w.to(x.dtype)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=PREC)
        if GATED:
            if EVEN:
                w2 = tl.load(w2_ptrs, eviction_policy="evict_first")
            else:
                w2 = tl.load(w2_ptrs, mask=n_ok[:, None] & k_ok, other=0.0, eviction_policy="evict_first")
            if SCALED:
                w2 = w2.to(x.dtype)
            acc2 = tl.dot(x, tl.trans(w2), acc2, input_precision=PREC)
        x_ptrs += BK
        w_ptrs += BK
        w2_ptrs += BK
    if SCALED:  # int8 weights: the sums (or each split's partial sums) times the features' scales
        acc = acc * tl.load(scale_ptr + n, mask=n_ok, other=0.0)[None, :]
        if GATED:
            acc2 = acc2 * tl.load(scale2_ptr + n, mask=n_ok, other=0.0)[None, :]
    out_mask = row_ok[:, None] & n_ok[None, :]
    if SPLIT:  # float32 partial sums, added up by _split_sum_kernel
        part = part_ptr + pid_k.to(tl.int64) * plane + rows[:, None] * N + n[None, :]
        tl.store(part, acc, mask=out_mask)
        if GATED:
            tl.store(part + up_part, acc2, mask=out_mask)
    else:
        y = _epilogue(acc, acc2, bias_ptr, res_ptr + rows[:, None] * sr_m + n[None, :], out_mask, n, n_ok,
                      y_ptr.dtype.element_ty, HAS_BIAS, HAS_RES, GATED)
        tl.store(y_ptr + rows[:, None] * sy_m + n[None, :], y, mask=out_mask)


@triton.jit
def _split_sum_kernel(part_ptr, bias_ptr, res_ptr, y_ptr, N, splits, plane, up_part, sr_m, sy_m, BN: tl.constexpr,
                      HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, GATED: tl.constexpr, PDL: tl.constexpr):
    wait_for_producers(PDL)
    row = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BN + tl.arange(0, BN)
    n_ok = n < N
    acc = tl.zeros((1, BN), tl.float32)
    acc2 = tl.zeros((1, BN), tl.float32)
    p = part_ptr + row * N + n[None, :]
    for _ in range(splits):
        acc += tl.load(p, mask=n_ok[None, :], other=0.0)
        if GATED:
            acc2 += tl.load(p + up_part, mask=n_ok[None, :], other=0.0)
        p += plane
    y = _epilogue(acc, acc2, bias_ptr, res_ptr + row * sr_m + n[None, :], n_ok[None, :], n, n_ok,
                  y_ptr.dtype.element_ty, HAS_BIAS, HAS_RES, GATED)
    tl.store(y_ptr + row * sy_m + n[None, :], y, mask=n_ok[None, :])


def dot_config(m: int, n: int, k: int, gated: bool, sms: int) -> dict:
    """Tile sizes, warps, stages and K split for ``m`` rows times an (n, k) weight
    (``benchmarks/linear_gpu.py --sweep`` times other choices). Up to 64 rows: 64 x 128 weight
    tiles, a long K step per load for the few rows; 4 pipeline stages, 3 for a wide output (as
    :func:`hymba.ops.linear.kernel_for` defines it: two 64-wide tiles per SM, the LM head), whose
    tiles already fill the GPU and need no deeper prefetch. 128 rows: 64 x 64 tiles on 8 warps
    (the row tile's accumulators take the registers a longer K step would), or for a wide output
    128 x 64 on 4 warps and 3 stages, fewer programs each reading more of the weight at once. K is
    split until the programs fill the GPU, keeping at least two blocks of K per split."""
    bm = min(128, max(16, triton.next_power_of_2(m)))
    wide = n >= 2 * 64 * sms
    if bm <= 64:
        cfg = dict(bn=64, bk=128, num_warps=4, num_stages=3 if wide else 4)
    elif wide and not gated:
        cfg = dict(bn=128, bk=64, num_warps=4, num_stages=3)
    else:
        cfg = dict(bn=64, bk=64, num_warps=8, num_stages=4)
    tiles = triton.cdiv(n, cfg["bn"]) * triton.cdiv(m, bm)
    split = max(1, min(sms // tiles, k // (2 * cfg["bk"])))
    return dict(cfg, bm=bm, split=split)


def _launch_dot(x: Tensor, weight: Tensor, weight2: Tensor | None, bias: Tensor | None,
                residual: Tensor | None, knobs: dict | None, scale: Tensor | None = None,
                scale2: Tensor | None = None) -> Tensor:
    *lead, k = x.shape
    n = weight.shape[0]
    rows = _rows(x, weight)
    _check_scale(weight, scale)
    if weight2 is not None:
        _check_scale(weight2, scale2)
        if (scale is None) != (scale2 is None):
            raise ValueError("the gate and up weights are both int8 (with scales) or neither")
    if weight2 is not None and weight2.shape != weight.shape:
        raise ValueError(f"gate weight {tuple(weight.shape)} and up weight {tuple(weight2.shape)} differ")
    m = rows.shape[0]
    res = _residual(residual, m, n)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if not (m and n):
        return y.view(*lead, n)
    cfg = dot_config(m, n, k, weight2 is not None, num_sms(x.device))
    cfg.update(knobs or {})
    bm, bn, bk = cfg["bm"], cfg["bn"], cfg["bk"]
    # no more stages than fit in shared memory (float32 operands take twice bf16's)
    stage_bytes = (bm * x.element_size() + (1 if weight2 is None else 2) * bn * weight.element_size()) * bk
    stages = min(cfg["num_stages"], 1 + SHARED_BYTES // stage_bytes)
    k_per_split = triton.cdiv(triton.cdiv(k, cfg["split"]), bk) * bk
    split = triton.cdiv(k, k_per_split)
    even = k % bk == 0 and n % bn == 0 and split * k_per_split == k
    part = y
    if split > 1:
        part = torch.empty((2 if weight2 is not None else 1) * split, m, n, dtype=torch.float32,
                           device=x.device)
    w2 = weight if weight2 is None else weight2
    b = weight if bias is None else bias
    pdl = pdl_launch(x.device)
    _dot_kernel[(triton.cdiv(n, bn), triton.cdiv(m, bm), split)](
        rows, weight, w2, y if scale is None else scale, y if scale2 is None else scale2, b, y if res is None else res, y, part, m, n, k, k_per_split,
        m * n, split * m * n, rows.stride(0), weight.stride(0), w2.stride(0), 0 if res is None else res.stride(0),
        y.stride(0), BM=bm, BN=bn, BK=bk,
        SPLIT=split > 1, EVEN=even, HAS_BIAS=bias is not None, HAS_RES=res is not None, GATED=weight2 is not None,
        SCALED=scale is not None, PREC="ieee" if x.dtype == torch.float32 else None, **pdl,
        num_warps=cfg["num_warps"], num_stages=stages,
    )
    if split > 1:
        sum_bn = min(1024, triton.next_power_of_2(n))
        _split_sum_kernel[(m, triton.cdiv(n, sum_bn))](
            part, b, y if res is None else res, y, n, split, m * n, split * m * n, 0 if res is None else res.stride(0),
            y.stride(0),
            BN=sum_bn, HAS_BIAS=bias is not None, HAS_RES=res is not None, GATED=weight2 is not None,
            **pdl, num_warps=4,
        )
    return y.view(*lead, n)


def linear_dot(x: Tensor, weight: Tensor, bias: Tensor | None = None, residual: Tensor | None = None,
               knobs: dict | None = None, scale: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` (plus ``residual``) through tensor-core tiles (see
    :func:`dot_config`; ``knobs`` overrides it). With ``scale`` (N,) the weight is int8 and the
    product is :func:`int8_linear_reference`'s."""
    return _launch_dot(x, weight, None, bias, residual, knobs, scale)


def swiglu_dot(x: Tensor, gate_weight: Tensor, up_weight: Tensor, knobs: dict | None = None,
               gate_scale: Tensor | None = None, up_scale: Tensor | None = None) -> Tensor:
    """``silu(x Wgᵀ) · (x Wuᵀ)`` through tensor-core tiles, both products in one kernel. With
    ``gate_scale`` and ``up_scale`` both weights are int8, each product
    :func:`int8_linear_reference`'s."""
    return _launch_dot(x, gate_weight, up_weight, None, None, knobs, gate_scale, up_scale)
