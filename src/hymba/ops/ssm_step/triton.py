"""The SSM branch's decode step in Triton, on a batch of single tokens, in place on the cache's
conv and SSM state, one program per (sequence, block of channels).

Two forms:

- the state update alone (:func:`ssm_decode_step_triton`), after the conv update, the x_proj
  product, the Δ/B/C norms and the dt_proj product ran as kernels of their own;
- for a few rows, the whole branch in two kernels (:func:`fused_mamba_step_triton`): the conv
  update with each block's share of the x_proj product (float32 partial sums), then the sum of the
  partial products, the Δ/B/C norms, the dt_proj product and the state update. At a few rows each
  of the five kernels of the first form moves little data, so their launches and the gaps between
  them dominate; two kernels have fewer of both. The x_proj and dt_proj weights may be int8 with
  one float32 scale per output feature (weights quantized by torchao, see
  :func:`hymba.ops.linear.quantized.int8_rows`): the sums are multiplied by the scales before they
  are rounded, as :func:`hymba.ops.linear.int8_linear_reference` computes the products.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._triton import early_inputs, pdl_launch, softplus, wait_for_producers
from ..conv.triton import conv_shift_update, conv_weights

# channels per program of the state update
BLOCK_D = 64
# the fused form's channels per program and warps (its knobs: see fused_mamba_step_triton)
FUSED_BLOCK_D = 64
FUSED_WARPS = 4


@triton.jit
def _state_params(A_log_ptr, D_ptr, bias_ptr, offs_d, offs_n, keep, N: tl.constexpr):
    """A = -exp(A_log) (BD, N), D and the Δ bias (BD,), in float32."""
    A = -tl.exp(tl.load(A_log_ptr + offs_d[:, None] * N + offs_n[None, :], mask=keep[:, None], other=0.0).to(tl.float32))
    D = tl.load(D_ptr + offs_d, mask=keep, other=0.0).to(tl.float32)
    dt_bias = tl.load(bias_ptr + offs_d, mask=keep, other=0.0).to(tl.float32)
    return A, D, dt_bias


@triton.jit
def _state_update(s_ptrs, keep, u, dt, Bv, Cv, A, D, z):
    """Δ = softplus(dt) (bias included); s ← exp(Δ A) s + Δ B u stored; y = (<s, C> + D u) · SiLU(z)."""
    dt = softplus(dt)
    s = tl.load(s_ptrs, mask=keep[:, None], other=0.0).to(tl.float32)
    s = tl.exp(dt[:, None] * A) * s + (dt * u)[:, None] * Bv[None, :]
    tl.store(s_ptrs, s.to(s_ptrs.dtype.element_ty), mask=keep[:, None])
    y = tl.sum(s * Cv[None, :], axis=1) + u * D
    return y * (z / (1.0 + tl.exp(-z)))


@triton.jit
def _state_step_kernel(
    state_ptr, u_ptr, dt_ptr, A_log_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, d,
    ss_b, ss_d, su_b, sdt_b, sB_b, sC_b, sz_b, sy_b,
    N: tl.constexpr, BD: tl.constexpr, PDL: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, N)
    keep = offs_d < d
    A, D, dt_bias = _state_params(A_log_ptr, D_ptr, bias_ptr, offs_d, offs_n, keep, N)
    wait_for_producers(PDL)  # the parameters are read before: they are not written during decoding
    u = tl.load(u_ptr + b * su_b + offs_d, mask=keep, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * sdt_b + offs_d, mask=keep, other=0.0).to(tl.float32) + dt_bias
    Bv = tl.load(B_ptr + b * sB_b + offs_n).to(tl.float32)
    Cv = tl.load(C_ptr + b * sC_b + offs_n).to(tl.float32)
    z = tl.load(z_ptr + b * sz_b + offs_d, mask=keep, other=0.0).to(tl.float32)
    y = _state_update(state_ptr + b * ss_b + offs_d[:, None] * ss_d + offs_n[None, :], keep, u, dt, Bv, Cv, A, D, z)
    tl.store(y_ptr + b * sy_b + offs_d, y.to(y_ptr.dtype.element_ty), mask=keep)


def ssm_decode_step_triton(
    state: Tensor, u: Tensor, delta: Tensor, A_log: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
    delta_bias: Tensor,
) -> Tensor:
    """Same as :func:`hymba.ops.ssm_step.reference.ssm_decode_step_reference` (softplus Δ,
    A = -exp(A_log), D skip, SiLU gate), in one kernel; ``state`` (b, d, n) is updated in place."""
    b, d = u.shape
    n = state.shape[-1]
    for t in (state, u, delta, z, B, C):
        if t.stride(-1) != 1:
            raise ValueError("the SSM state, u, delta, z, B and C need a contiguous last dimension")
    (A_log, D, delta_bias), copied = early_inputs(A_log, D, delta_bias)
    y = torch.empty(b, d, dtype=u.dtype, device=u.device)
    _state_step_kernel[(b, triton.cdiv(d, BLOCK_D))](
        state, u, delta, A_log, B, C, D, z, delta_bias, y, d,
        state.stride(0), state.stride(1), u.stride(0), delta.stride(0), B.stride(0), C.stride(0),
        z.stride(0), y.stride(0), N=n, BD=BLOCK_D, **pdl_launch(u.device, copied),
    )
    return y


@triton.jit
def _conv_xproj_kernel(
    x_ptr, cstate_ptr, cw_ptr, cb_ptr, xw_ptr, xc_ptr, part_ptr, d, R,
    sx_b, ss_b, ss_d, ss_k, sxw, sxc_b,
    K: tl.constexpr, KP: tl.constexpr, BD: tl.constexpr, RP: tl.constexpr, HAS_BIAS: tl.constexpr,
    PDL: tl.constexpr,
):
    """The conv update of one block of channels, and the block's share of x_proj's product:
    part[row, block, :R] = W[:, block] · xc[block] in float32."""
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    offs_d = blk * BD + tl.arange(0, BD)
    offs_k = tl.arange(0, KP)
    offs_r = tl.arange(0, RP)
    keep_d = offs_d < d
    w, bias = conv_weights(cw_ptr, cb_ptr, offs_d, offs_k, keep_d, K, HAS_BIAS)
    xw = tl.load(xw_ptr + offs_r[:, None] * sxw + offs_d[None, :], mask=(offs_r < R)[:, None] & keep_d[None, :],
                 other=0.0)
    wait_for_producers(PDL)  # the weights are read before: they are not written during decoding
    x = tl.load(x_ptr + b * sx_b + offs_d, mask=keep_d, other=0.0)
    y = conv_shift_update(x, cstate_ptr + b * ss_b + offs_d[:, None] * ss_d, offs_k, keep_d, ss_k, w, bias, K, True)
    xc = y.to(xc_ptr.dtype.element_ty)  # the conv output, rounded as the unfused kernel stores it
    tl.store(xc_ptr + b * sxc_b + offs_d, xc, mask=keep_d)
    part = tl.sum(xw.to(tl.float32) * xc.to(tl.float32)[None, :], axis=1)
    tl.store(part_ptr + (b * tl.num_programs(1) + blk) * RP + offs_r, part, mask=offs_r < R)


@triton.jit
def _projected(part_rows, cols, blk_ok, col_ok, dtype, scale_ptr, SCALED: tl.constexpr):
    """The x_proj output at ``cols``: the blocks' partial sums added (times the int8 weight's
    scales), rounded to ``dtype``."""
    total = tl.sum(tl.load(part_rows + cols[None, :], mask=blk_ok[:, None] & col_ok[None, :], other=0.0), axis=0)
    if SCALED:
        total = total * tl.load(scale_ptr + cols, mask=col_ok, other=0.0)
    return total.to(dtype, fp_downcast_rounding="rtne").to(tl.float32)


@triton.jit
def _rms_normed(x, w, width, eps, dtype):
    """RMSNorm of a float32 vector (zeros past ``width``) with weight ``w``, rounded as
    ``ops.rms_norm_reference`` rounds: the normalised x to ``dtype``, then the product."""
    inv = tl.math.rsqrt(tl.sum(x * x, axis=0) / width + eps)
    normed = (x * inv).to(dtype, fp_downcast_rounding="rtne").to(tl.float32)
    return (w * normed).to(dtype, fp_downcast_rounding="rtne").to(tl.float32)


@triton.jit
def _ssm_from_parts_kernel(
    part_ptr, xc_ptr, z_ptr, state_ptr, dtw_ptr, dtb_ptr, A_log_ptr, D_ptr, nw_dt_ptr, nw_B_ptr, nw_C_ptr,
    xs_ptr, dts_ptr, y_ptr, d, blocks, r, eps,
    sxc_b, sz_b, ss_b, ss_d, sdtw, sy_b,
    N: tl.constexpr, BD: tl.constexpr, RP: tl.constexpr, RDT_P: tl.constexpr, BLOCKS_P: tl.constexpr,
    NORMS: tl.constexpr, X_SCALED: tl.constexpr, DT_SCALED: tl.constexpr, PDL: tl.constexpr,
):
    """x_proj's output from the partial sums, the Δ/B/C norms, dt_proj for this block of channels
    and the state update (the x_proj, dt_proj and norm outputs rounded to the activations' dtype,
    as the unfused path stores them)."""
    b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, N)
    offs_r = tl.arange(0, RDT_P)
    keep = offs_d < d
    r_ok = offs_r < r
    dtype = xc_ptr.dtype.element_ty
    A, D, dt_bias = _state_params(A_log_ptr, D_ptr, dtb_ptr, offs_d, offs_n, keep, N)
    dtw = tl.load(dtw_ptr + offs_d[:, None] * sdtw + offs_r[None, :], mask=keep[:, None] & r_ok[None, :],
                  other=0.0).to(tl.float32)
    if NORMS:
        nw_dt = tl.load(nw_dt_ptr + offs_r, mask=r_ok, other=0.0).to(tl.float32)
        nw_B = tl.load(nw_B_ptr + offs_n).to(tl.float32)
        nw_C = tl.load(nw_C_ptr + offs_n).to(tl.float32)
    wait_for_producers(PDL)  # the parameters are read before: they are not written during decoding
    blk = tl.arange(0, BLOCKS_P)
    part_rows = part_ptr + (b * blocks + blk)[:, None] * RP
    blk_ok = blk < blocks
    all_n = offs_n < N
    dt_in = _projected(part_rows, offs_r, blk_ok, r_ok, dtype, xs_ptr, X_SCALED)
    Bv = _projected(part_rows, r + offs_n, blk_ok, all_n, dtype, xs_ptr, X_SCALED)
    Cv = _projected(part_rows, r + N + offs_n, blk_ok, all_n, dtype, xs_ptr, X_SCALED)
    if NORMS:
        dt_in = _rms_normed(dt_in, nw_dt, r, eps, dtype)
        Bv = _rms_normed(Bv, nw_B, N, eps, dtype)
        Cv = _rms_normed(Cv, nw_C, N, eps, dtype)
    dt = tl.sum(dtw * dt_in[None, :], axis=1)
    if DT_SCALED:
        dt = dt * tl.load(dts_ptr + offs_d, mask=keep, other=0.0)
    dt = dt.to(dtype, fp_downcast_rounding="rtne").to(tl.float32)
    u = tl.load(xc_ptr + b * sxc_b + offs_d, mask=keep, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + b * sz_b + offs_d, mask=keep, other=0.0).to(tl.float32)
    y = _state_update(state_ptr + b * ss_b + offs_d[:, None] * ss_d + offs_n[None, :], keep, u, dt + dt_bias,
                      Bv, Cv, A, D, z)
    tl.store(y_ptr + b * sy_b + offs_d, y.to(y_ptr.dtype.element_ty), mask=keep)


def fused_mamba_step_triton(
    x: Tensor, z: Tensor, conv_state: Tensor, ssm_state: Tensor, conv_weight: Tensor, conv_bias: Tensor | None,
    x_proj_weight: Tensor, norm_weights: tuple[Tensor, Tensor, Tensor] | None, eps: float, dt_weight: Tensor,
    dt_bias: Tensor, A_log: Tensor, D: Tensor, block_d: int = FUSED_BLOCK_D, num_warps: int = FUSED_WARPS,
    x_proj_scale: Tensor | None = None, dt_scale: Tensor | None = None,
) -> Tensor:
    """:func:`hymba.ops.ssm_step.fused_mamba_step` in two kernels; both states are updated in
    place. ``block_d`` channels a program and ``num_warps`` are the kernels' knobs. With
    ``x_proj_scale`` / ``dt_scale`` (one float32 scale per output feature, contiguous) that weight
    is int8."""
    b, d = x.shape
    n, kernel, r = ssm_state.shape[-1], conv_state.shape[-1], dt_weight.shape[1]
    width = x_proj_weight.shape[0]
    for t in (x, z, ssm_state):
        if t.stride(-1) != 1:
            raise ValueError("the fused SSM step needs x, z and the SSM state with a contiguous last dimension")
    for w, s in ((x_proj_weight, x_proj_scale), (dt_weight, dt_scale)):
        if (s is not None) != (w.dtype == torch.int8) or (s is not None and s.shape != (w.shape[0],)):
            raise ValueError(f"an int8 projection weight takes one scale per output feature, a "
                             f"{w.dtype} weight {tuple(w.shape)} none (got {None if s is None else tuple(s.shape)})")
    early, copied = early_inputs(conv_weight, conv_bias, x_proj_weight, dt_weight, dt_bias, A_log, D,
                                 *(norm_weights or ()))
    conv_w, conv_b, x_w, dt_w, dt_b, A_log, D = early[:7]
    norms = tuple(early[7:]) or (dt_b, dt_b, dt_b)  # placeholders without norms
    blocks = triton.cdiv(d, block_d)
    rp = triton.next_power_of_2(width)
    xc = torch.empty(b, d, dtype=x.dtype, device=x.device)
    part = torch.empty(b, blocks, rp, dtype=torch.float32, device=x.device)
    _conv_xproj_kernel[(b, blocks)](
        x, conv_state, conv_w, conv_b if conv_b is not None else x, x_w, xc, part, d, width,
        x.stride(0), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2), x_w.stride(0), xc.stride(0),
        K=kernel, KP=triton.next_power_of_2(kernel), BD=block_d, RP=rp, HAS_BIAS=conv_b is not None,
        num_warps=num_warps, **pdl_launch(x.device, copied),
    )
    y = torch.empty(b, d, dtype=x.dtype, device=x.device)
    _ssm_from_parts_kernel[(b, blocks)](
        part, xc, z, ssm_state, dt_w, dt_b, A_log, D, *norms,
        y if x_proj_scale is None else x_proj_scale.contiguous(), y if dt_scale is None else dt_scale.contiguous(),
        y, d, blocks, r, eps,
        xc.stride(0), z.stride(0), ssm_state.stride(0), ssm_state.stride(1), dt_w.stride(0), y.stride(0),
        N=n, BD=block_d, RP=rp, RDT_P=triton.next_power_of_2(r), BLOCKS_P=triton.next_power_of_2(blocks),
        NORMS=norm_weights is not None, X_SCALED=x_proj_scale is not None, DT_SCALED=dt_scale is not None,
        num_warps=num_warps, **pdl_launch(x.device),
    )
    return y
