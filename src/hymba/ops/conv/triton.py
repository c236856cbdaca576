"""Causal depthwise conv in Triton: over a whole sequence (prefill and training), and one decode
step on the cache's conv state.

One program per (row, block of time steps, block of channels) sums the ``kernel`` shifted inputs,
reading the inputs that precede the sequence from the initial state. Same roundings as the
reference (``F.conv1d`` then SiLU, each rounded to the input's dtype). The backward (training,
from a zero initial state) saves nothing but the input: a first kernel recomputes the
pre-activation and writes the gradient there (float32) with each time segment's share of the
weight and bias gradients, a second sums the ``kernel`` steps each input reaches.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._triton import early_inputs, pdl_launch, split_steps, wait_for_producers
from ..derived import derived

BLOCK_T = 32
BLOCK_C = 128
# The backward kernels' tile (time steps, channels) and warps. The first kernel holds the K input
# tiles and K + 1 running sums for the weight and bias gradients in registers, so its tile is
# small (wider or longer tiles spill); it runs about GRAD_PROGRAMS programs, each over a time
# segment: several waves on any GPU, while each program's share of the weight gradient remains a
# long sum (``benchmarks/conv_gpu.py --bwd-sweep`` times other tiles and program counts).
BWD_BLOCK_T = 8
BWD_BLOCK_C = 64
BWD_WARPS = 4
GRAD_PROGRAMS = 1024


def _taps(weight: Tensor, channels: int, kernel: int) -> Tensor:
    """The weight as (kernel, channels), contiguous: a tap's weights for a block of channels
    load as one vector (read as (channels, kernel), the loads of a tap are strided by the kernel
    size and keep the backward's L1 busy). Kept
    between calls while the weight is unchanged (prefill), see :func:`hymba.ops.derived`."""
    return derived(weight, "conv taps", lambda w: w.detach().reshape(channels, kernel).t().contiguous())


@triton.jit
def _causal_conv_kernel(
    x_ptr, w_ptr, b_ptr, s_ptr, out_ptr, L, C,
    sx_b, sx_l, sw_k, ss_b, ss_c, ss_k, so_b, so_l,
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
        w = tl.load(w_ptr + k * sw_k + c, mask=c_ok, other=0.0).to(tl.float32)
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
    taps = _taps(weight, channels, kernel)
    out = torch.empty(batch, length, channels, dtype=x.dtype, device=x.device)
    state = initial_state if initial_state is not None else x  # a placeholder pointer without one
    if batch and length:
        grid = (batch, triton.cdiv(length, BLOCK_T), triton.cdiv(channels, BLOCK_C))
        _causal_conv_kernel[grid](
            x, taps, bias if bias is not None else taps, state, out, length, channels,
            x.stride(0), x.stride(1), taps.stride(0),
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
def _causal_conv_grad_kernel(
    x_ptr, w_ptr, b_ptr, dy_ptr, g_ptr, dw_ptr, db_ptr, L, C, seg_len, num_segs, sx_b, sx_l, sw_k, sdy_b, sdy_l,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
):
    """Backward pass 1 over a (time segment, channel block) of one row, BT steps at a time: the
    gradient at the pre-activation, g(t) = dy(t)·SiLU'(pre(t)) (float32, contiguous (b, L, C)),
    and the segment's shares of dw_k = Σ_t g(t) x(t-K+1+k) and db = Σ_t g(t) (rows of
    ``dw_ptr``/``db_ptr`` per (row, segment)), summed elementwise over the segment's blocks and
    reduced over time once (a reduction per block kept shared memory busy)."""
    b = tl.program_id(0).to(tl.int64)
    seg = tl.program_id(1)
    c = tl.program_id(2) * BC + tl.arange(0, BC)
    c_ok = c < C
    dtype = x_ptr.dtype.element_ty
    weights = ()
    for k in tl.static_range(K):
        weights = weights + (tl.load(w_ptr + k * sw_k + c, mask=c_ok, other=0.0).to(tl.float32),)
    if HAS_BIAS:
        bias = tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    sums = ()  # Σ_t g(t) x(t-K+1+k) for each k, then Σ_t g(t), elementwise over the block
    for _ in tl.static_range(K + 1):
        sums = sums + (tl.zeros((BT, BC), tl.float32),)
    start = seg * seg_len
    for t0 in range(start, tl.minimum(start + seg_len, L), BT):
        t = t0 + tl.arange(0, BT)
        t_ok = t < L
        pre = tl.zeros((BT, BC), tl.float32)
        taps = ()  # the K inputs each step reads
        for k in tl.static_range(K):
            src = t - (K - 1) + k
            v = tl.load(x_ptr + b * sx_b + src[:, None].to(tl.int64) * sx_l + c[None, :],
                        mask=((src >= 0) & t_ok)[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
            pre += weights[k][None, :] * v
            taps = taps + (v,)
        if HAS_BIAS:
            pre += bias[None, :]
        g = tl.load(dy_ptr + b * sdy_b + t[:, None].to(tl.int64) * sdy_l + c[None, :],
                    mask=t_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
        if ACT:  # SiLU' at the rounded pre-activation, as the forward applies SiLU to it
            p = pre.to(dtype, fp_downcast_rounding="rtne").to(tl.float32)
            sig = 1.0 / (1.0 + tl.exp(-p))
            g = g * sig * (1.0 + p * (1.0 - sig))
        tl.store(g_ptr + b * L * C + t[:, None].to(tl.int64) * C + c[None, :], g,
                 mask=t_ok[:, None] & c_ok[None, :])
        added = ()
        for k in tl.static_range(K):
            added = added + (sums[k] + g * taps[k],)
        sums = added + (sums[K] + g,)
    share = (b * num_segs + seg) * C
    for k in tl.static_range(K):
        tl.store(dw_ptr + (share + c) * K + k, tl.sum(sums[k], axis=0), mask=c_ok)
    tl.store(db_ptr + share + c, tl.sum(sums[K], axis=0), mask=c_ok)


@triton.jit
def _causal_conv_dx_kernel(g_ptr, w_ptr, dx_ptr, L, C, sw_k, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """Backward pass 2: dx(s) = Σ_j w_{K-1-j} g(s + j) (g, dx contiguous (b, L, C))."""
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BT + tl.arange(0, BT)
    c = tl.program_id(2) * BC + tl.arange(0, BC)
    c_ok = c < C
    dx = tl.zeros((BT, BC), tl.float32)
    for j in tl.static_range(K):
        u = t + j
        w = tl.load(w_ptr + (K - 1 - j) * sw_k + c, mask=c_ok, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + b * L * C + u[:, None].to(tl.int64) * C + c[None, :],
                    mask=(u < L)[:, None] & c_ok[None, :], other=0.0)
        dx += w[None, :] * g
    tl.store(dx_ptr + b * L * C + t[:, None].to(tl.int64) * C + c[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=(t < L)[:, None] & c_ok[None, :])


class _CausalConv(torch.autograd.Function):
    """The conv from a zero initial state, with its backward (the final state is a copy of the
    last ``kernel`` inputs; its gradient goes back to them)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, activation: bool) -> tuple[Tensor, Tensor]:
        if x.stride(-1) != 1:  # the backward reads x with unit channel stride
            x = x.contiguous()
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
        w = _taps(weight, channels, kernel)
        dx = torch.empty(batch, length, channels, dtype=x.dtype, device=x.device)
        c_blocks = triton.cdiv(channels, BWD_BLOCK_C)
        # time segments of whole blocks, about GRAD_PROGRAMS programs in all
        wanted = max(1, min(triton.cdiv(length, BWD_BLOCK_T), GRAD_PROGRAMS // max(1, batch * c_blocks)))
        num_segs, seg_len = split_steps(length, wanted, BWD_BLOCK_T)
        f32 = dict(dtype=torch.float32, device=x.device)
        g = torch.empty(batch, length, channels, **f32)  # the gradient at the pre-activation
        dw = torch.empty(batch * num_segs, channels, kernel, **f32)
        db = torch.empty(batch * num_segs, channels, **f32)
        if batch and length:
            tiles = dict(K=kernel, BT=BWD_BLOCK_T, BC=BWD_BLOCK_C, num_warps=BWD_WARPS)
            _causal_conv_grad_kernel[(batch, num_segs, c_blocks)](
                x, w, bias if bias is not None else w, dy, g, dw, db, length, channels, seg_len, num_segs,
                x.stride(0), x.stride(1), w.stride(0), dy.stride(0), dy.stride(1),
                HAS_BIAS=bias is not None, ACT=ctx.activation, **tiles,
            )
            _causal_conv_dx_kernel[(batch, triton.cdiv(length, BWD_BLOCK_T), c_blocks)](
                g, w, dx, length, channels, w.stride(0), **tiles)
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


# ---------------------------------------------------------------- one decode step

# channels per program of the one-step update
UPDATE_BLOCK_C = 64


@triton.jit
def conv_weights(w_ptr, bias_ptr, offs_d, offs_k, keep_d, K: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The conv taps (BD, KP) and bias (BD,) in float32 (zero bias without one)."""
    w = tl.load(w_ptr + offs_d[:, None] * K + offs_k[None, :], mask=keep_d[:, None] & (offs_k[None, :] < K), other=0.0)
    bias = tl.zeros(offs_d.shape, tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=keep_d, other=0.0).to(tl.float32)
    return w.to(tl.float32), bias


@triton.jit
def conv_shift_update(x, row, offs_k, keep_d, ss_k, w, bias, K: tl.constexpr, SILU: tl.constexpr):
    """Shift the conv state rows at ``row`` left by one, append ``x``, store them and return the
    conv output in float32: slot k takes slot k + 1, the last slot takes x."""
    shifted = tl.load(row + (offs_k[None, :] + 1) * ss_k, mask=keep_d[:, None] & (offs_k[None, :] + 1 < K), other=0.0)
    new = tl.where(offs_k[None, :] == K - 1, x[:, None].to(shifted.dtype), shifted)
    tl.store(row + offs_k[None, :] * ss_k, new, mask=keep_d[:, None] & (offs_k[None, :] < K))
    y = tl.sum(new.to(tl.float32) * w, axis=1) + bias
    if SILU:
        y = y / (1.0 + tl.exp(-y))
    return y


@triton.jit
def _conv_step_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, out_ptr, d,
    sx_b, sx_d, ss_b, ss_d, ss_k, so_b,
    K: tl.constexpr, KP: tl.constexpr, BD: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    PDL: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    offs_k = tl.arange(0, KP)
    keep_d = offs_d < d
    w, bias = conv_weights(w_ptr, bias_ptr, offs_d, offs_k, keep_d, K, HAS_BIAS)
    wait_for_producers(PDL)  # the weights are read before: they are not written during decoding
    x = tl.load(x_ptr + b * sx_b + offs_d * sx_d, mask=keep_d, other=0.0)
    y = conv_shift_update(x, state_ptr + b * ss_b + offs_d[:, None] * ss_d, offs_k, keep_d, ss_k, w, bias, K, SILU)
    tl.store(out_ptr + b * so_b + offs_d, y.to(out_ptr.dtype.element_ty), mask=keep_d)


def causal_conv1d_update_triton(
    x: Tensor, state: Tensor, weight: Tensor, bias: Tensor | None = None, activation: bool = True
) -> Tensor:
    """Same as :func:`hymba.ops.conv.reference.causal_conv1d_update_reference`: x (b, d), state
    (b, d, K) updated in place, weight (d, K); returns (b, d) in x's dtype."""
    b, d = x.shape
    kernel = state.shape[-1]
    out = torch.empty(b, d, dtype=x.dtype, device=x.device)
    (weight, bias), copied = early_inputs(weight, bias)
    _conv_step_kernel[(b, triton.cdiv(d, UPDATE_BLOCK_C))](
        x, state, weight, bias if bias is not None else weight, out, d,
        x.stride(0), x.stride(1), state.stride(0), state.stride(1), state.stride(2), out.stride(0),
        K=kernel, KP=triton.next_power_of_2(kernel), BD=UPDATE_BLOCK_C, HAS_BIAS=bias is not None, SILU=activation,
        **pdl_launch(x.device, copied),
    )
    return out
