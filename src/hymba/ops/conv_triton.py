"""Causal depthwise conv over a whole sequence in Triton (prefill; inference only).

One program per (row, block of time steps, block of channels) sums the ``kernel`` shifted inputs,
reading the inputs that precede the sequence from the initial state. Same roundings as the
reference (``F.conv1d`` then SiLU, each rounded to the input's dtype).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_T = 32
BLOCK_C = 128


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
