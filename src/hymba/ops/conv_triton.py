"""Causal depthwise conv over a whole sequence in Triton (prefill and training).

One program per (row, block of time steps, block of channels) sums the ``kernel`` shifted inputs,
reading the inputs that precede the sequence from the initial state. Same roundings as the
reference (``F.conv1d`` then SiLU, each rounded to the input's dtype). The backward (training,
from a zero initial state) recomputes the pre-activation at the ``kernel`` later steps each
input reaches, so nothing but the input is saved.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_T = 32
BLOCK_C = 128
# The backward's tile (time steps, channels) and warps. It holds the K input tiles and three
# running tiles, so a large tile spills: 32 x 128 on 4 warps needs 255 registers and spills, 16 x 256
# on 8 warps 137 (offline sm_90 builds); timed by ``benchmarks/conv_gpu.py --bwd-sweep``.
BWD_BLOCK_T = 32
BWD_BLOCK_C = 128
BWD_WARPS = 4


@triton.jit
def _causal_conv_kernel(
    x_ptr, w_ptr, b_ptr, s_ptr, out_ptr, L, C,
    sx_b, sx_l, sw_c, ss_b, ss_c, ss_k, so_b, so_l,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, ACT: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BT + tl.arange(0, BT)
    c = tl.program_id(2) * BC + tl.arange(0, BC)
    t_ok = t < L
    c_ok = c < C
    dtype = x_ptr.dtype.element_ty
    acc = tl.zeros((BT, BC), tl.float32)
    for k in tl.static_range(K):
        src = t - (K - 1) + k  # the input time step this tap reads; < 0: from the state
        w = tl.load(w_ptr + c * sw_c + k, mask=c_ok, other=0.0).to(tl.float32)
        inside = (src >= 0) & t_ok
        v = tl.load(x_ptr + b * sx_b + src[:, None].to(tl.int64) * sx_l + c[None, :],
                    mask=inside[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
        if HAS_STATE:
            before = (src < 0) & t_ok
            sv = tl.load(s_ptr + b * ss_b + c[None, :] * ss_c + (K + src)[:, None] * ss_k,
                         mask=before[:, None] & c_ok[None, :], other=0.0)
            # the reference casts the state to x's dtype (via float32: any state dtype may come)
            v += sv.to(tl.float32).to(dtype, fp_downcast_rounding="rtne").to(tl.float32)
        acc += w[None, :] * v
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    y = acc.to(dtype, fp_downcast_rounding="rtne")
    if ACT:
        y32 = y.to(tl.float32)
        y = (y32 / (1.0 + tl.exp(-y32))).to(dtype, fp_downcast_rounding="rtne")
    tl.store(out_ptr + b * so_b + t[:, None].to(tl.int64) * so_l + c[None, :], y,
             mask=t_ok[:, None] & c_ok[None, :])


def causal_conv1d_triton(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, initial_state: Tensor | None = None,
    activation: bool = True,
) -> tuple[Tensor, Tensor]:
    """Same as :func:`hymba.ops.conv.causal_conv1d_reference`; ``y`` is contiguous."""
    batch, length, channels = x.shape
    kernel = weight.shape[-1]
    if x.stride(-1) != 1:
        x = x.contiguous()
    weight = weight.reshape(channels, kernel)
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    out = torch.empty(batch, length, channels, dtype=x.dtype, device=x.device)
    state = initial_state if initial_state is not None else x  # a placeholder pointer without one
    if batch and length:
        grid = (batch, triton.cdiv(length, BLOCK_T), triton.cdiv(channels, BLOCK_C))
        _causal_conv_kernel[grid](
            x, weight, bias if bias is not None else weight, state, out, length, channels,
            x.stride(0), x.stride(1), weight.stride(0),
            state.stride(0), state.stride(1), state.stride(2) if initial_state is not None else 0,
            out.stride(0), out.stride(1),
            K=kernel, HAS_BIAS=bias is not None, HAS_STATE=initial_state is not None, ACT=activation,
            BT=BLOCK_T, BC=BLOCK_C, num_warps=4,
        )
    # the last `kernel` inputs, with the state in front when the sequence is shorter
    xt = x.transpose(1, 2)
    if length >= kernel:
        final = xt[..., length - kernel:].contiguous()
    else:
        prefix = (initial_state.to(x.dtype) if initial_state is not None
                  else x.new_zeros(batch, channels, kernel))
        final = torch.cat([prefix[..., length:], xt], dim=-1)
    return out, final


@triton.jit
def _causal_conv_bwd_kernel(
    x_ptr, w_ptr, b_ptr, dy_ptr, dx_ptr, dw_ptr, db_ptr, L, C, num_tblocks,
    sx_b, sx_l, sw_c, sdy_b, sdy_l,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
):
    """dx of a (time block, channel block) of one row, and the block's shares of dw and db (rows
    of ``dw_ptr``/``db_ptr`` per (row, time block)). With g(u) = dy(u)·SiLU'(pre(u)):
    dx(s) = Σ_k w_k g(s + K-1-k), dw_k = Σ_t g(t) x(t-K+1+k), db = Σ_t g(t)."""
    b = tl.program_id(0).to(tl.int64)
    tb = tl.program_id(1)
    t = tb * BT + tl.arange(0, BT)
    c = tl.program_id(2) * BC + tl.arange(0, BC)
    c_ok = c < C
    dtype = x_ptr.dtype.element_ty
    x_row = x_ptr + b * sx_b + c[None, :]
    dx = tl.zeros((BT, BC), tl.float32)
    taps = ()  # the K input tiles the steps t read, kept from j = 0 for dw
    for j in tl.static_range(K):  # g at the steps t + j, which read x(t) through tap K-1-j
        u = t + j
        u_ok = u < L
        pre = tl.zeros((BT, BC), tl.float32)
        for k in tl.static_range(K):
            src = u - (K - 1) + k
            w = tl.load(w_ptr + c * sw_c + k, mask=c_ok, other=0.0).to(tl.float32)
            v = tl.load(x_row + src[:, None].to(tl.int64) * sx_l,
                        mask=((src >= 0) & u_ok)[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
            pre += w[None, :] * v
            if j == 0:
                taps = taps + (v,)
        if HAS_BIAS:
            pre += tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        g = tl.load(dy_ptr + b * sdy_b + u[:, None].to(tl.int64) * sdy_l + c[None, :],
                    mask=u_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
        if ACT:  # SiLU' at the rounded pre-activation, as the forward applies SiLU to it
            p = pre.to(dtype, fp_downcast_rounding="rtne").to(tl.float32)
            sig = 1.0 / (1.0 + tl.exp(-p))
            g = g * sig * (1.0 + p * (1.0 - sig))
        w_j = tl.load(w_ptr + c * sw_c + (K - 1 - j), mask=c_ok, other=0.0).to(tl.float32)
        dx += w_j[None, :] * g
        if j == 0:  # g(t) itself: this block's shares of dw and db
            share = (b * num_tblocks + tb) * C
            for k in tl.static_range(K):
                tl.store(dw_ptr + (share + c) * K + k, tl.sum(g * taps[k], axis=0), mask=c_ok)
            tl.store(db_ptr + share + c, tl.sum(g, axis=0), mask=c_ok)
    tl.store(dx_ptr + b * L * C + t[:, None].to(tl.int64) * C + c[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=(t < L)[:, None] & c_ok[None, :])


class _CausalConv(torch.autograd.Function):
    """The conv from a zero initial state, with its backward (the final state is a copy of the
    last ``kernel`` inputs; its gradient goes back to them)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, activation: bool) -> tuple[Tensor, Tensor]:
        out, final = causal_conv1d_triton(x, weight, bias, None, activation)
        ctx.save_for_backward(x, weight, bias)
        ctx.activation = activation
        ctx.set_materialize_grads(False)
        return out, final

    @staticmethod
    def backward(ctx, dy: Tensor | None, dfinal: Tensor | None):
        x, weight, bias = ctx.saved_tensors
        batch, length, channels = x.shape
        kernel = weight.shape[-1]
        if dy is None:
            dy = x.new_zeros(x.shape)
        if dy.stride(-1) != 1:
            dy = dy.contiguous()
        w = weight.reshape(channels, kernel).contiguous()
        dx = torch.empty(batch, length, channels, dtype=x.dtype, device=x.device)
        blocks = triton.cdiv(length, BWD_BLOCK_T)
        f32 = dict(dtype=torch.float32, device=x.device)
        dw = torch.empty(batch * blocks, channels, kernel, **f32)
        db = torch.empty(batch * blocks, channels, **f32)
        if batch and length:
            _causal_conv_bwd_kernel[(batch, blocks, triton.cdiv(channels, BWD_BLOCK_C))](
                x, w, bias if bias is not None else w, dy, dx, dw, db, length, channels, blocks,
                x.stride(0), x.stride(1), w.stride(0), dy.stride(0), dy.stride(1),
                K=kernel, HAS_BIAS=bias is not None, ACT=ctx.activation, BT=BWD_BLOCK_T, BC=BWD_BLOCK_C,
                num_warps=BWD_WARPS,
            )
        if dfinal is not None:
            dx[:, length - kernel:] += dfinal.transpose(1, 2).to(dx.dtype)
        return (dx, dw.sum(0).reshape(weight.shape).to(weight.dtype),
                db.sum(0).to(bias.dtype) if bias is not None else None, None)


def causal_conv1d_train(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: bool = True
                        ) -> tuple[Tensor, Tensor]:
    """:func:`causal_conv1d_triton` from a zero initial state, with a backward; for sequences
    of at least ``kernel`` steps."""
    if x.shape[1] < weight.shape[-1]:
        raise ValueError(f"a sequence of {x.shape[1]} steps is shorter than the kernel ({weight.shape[-1]})")
    return _CausalConv.apply(x, weight, bias, activation)
