"""The SSM branch's decode step in Triton: the conv update and the state update, one kernel each.

Both work on a batch of single tokens, in place on the cache's conv and SSM state, with one
program per (sequence, block of channels). Between the two sit the x_proj matmul and the Δ/B/C
norms, which stay in PyTorch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .scan.triton import _softplus

BLOCK_D = 64


@triton.jit
def _conv_step_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, out_ptr, d,
    sx_b, sx_d, ss_b, ss_d, ss_k, so_b,
    K: tl.constexpr, KP: tl.constexpr, BD: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    offs_k = tl.arange(0, KP)
    keep_d = offs_d < d
    x = tl.load(x_ptr + b * sx_b + offs_d * sx_d, mask=keep_d, other=0.0)
    row = state_ptr + b * ss_b + offs_d[:, None] * ss_d
    # shift left by one and append x: slot k takes slot k + 1, the last slot takes x
    shifted = tl.load(row + (offs_k[None, :] + 1) * ss_k, mask=keep_d[:, None] & (offs_k[None, :] + 1 < K), other=0.0)
    last = offs_k[None, :] == K - 1
    new = tl.where(last, x[:, None].to(shifted.dtype), shifted)
    tl.store(row + offs_k[None, :] * ss_k, new, mask=keep_d[:, None] & (offs_k[None, :] < K))
    w = tl.load(w_ptr + offs_d[:, None] * K + offs_k[None, :], mask=keep_d[:, None] & (offs_k[None, :] < K), other=0.0)
    y = tl.sum(new.to(tl.float32) * w.to(tl.float32), axis=1)
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_d, mask=keep_d, other=0.0).to(tl.float32)
    if SILU:
        y = y / (1.0 + tl.exp(-y))
    tl.store(out_ptr + b * so_b + offs_d, y.to(out_ptr.dtype.element_ty), mask=keep_d)


def causal_conv1d_update_triton(
    x: Tensor, state: Tensor, weight: Tensor, bias: Tensor | None = None, activation: bool = True
) -> Tensor:
    """Same as :func:`hymba.ops.conv.causal_conv1d_update`: x (b, d), state (b, d, K) updated in
    place, weight (d, K); returns (b, d) in x's dtype."""
    b, d = x.shape
    kernel = state.shape[-1]
    out = torch.empty(b, d, dtype=x.dtype, device=x.device)
    _conv_step_kernel[(b, triton.cdiv(d, BLOCK_D))](
        x, state, weight.contiguous(), bias if bias is not None else weight, out, d,
        x.stride(0), x.stride(1), state.stride(0), state.stride(1), state.stride(2), out.stride(0),
        K=kernel, KP=triton.next_power_of_2(kernel), BD=BLOCK_D, HAS_BIAS=bias is not None, SILU=activation,
    )
    return out


@triton.jit
def _state_step_kernel(
    state_ptr, u_ptr, dt_ptr, A_log_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, d,
    ss_b, ss_d, su_b, sdt_b, sB_b, sC_b, sz_b, sy_b,
    N: tl.constexpr, BD: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, N)
    keep = offs_d < d
    u = tl.load(u_ptr + b * su_b + offs_d, mask=keep, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * sdt_b + offs_d, mask=keep, other=0.0).to(tl.float32)
    dt = _softplus(dt + tl.load(bias_ptr + offs_d, mask=keep, other=0.0).to(tl.float32))
    A = -tl.exp(tl.load(A_log_ptr + offs_d[:, None] * N + offs_n[None, :], mask=keep[:, None], other=0.0).to(tl.float32))
    Bv = tl.load(B_ptr + b * sB_b + offs_n).to(tl.float32)
    Cv = tl.load(C_ptr + b * sC_b + offs_n).to(tl.float32)
    s_ptrs = state_ptr + b * ss_b + offs_d[:, None] * ss_d + offs_n[None, :]
    s = tl.load(s_ptrs, mask=keep[:, None], other=0.0).to(tl.float32)
    s = tl.exp(dt[:, None] * A) * s + (dt * u)[:, None] * Bv[None, :]
    tl.store(s_ptrs, s.to(state_ptr.dtype.element_ty), mask=keep[:, None])
    y = tl.sum(s * Cv[None, :], axis=1) + u * tl.load(D_ptr + offs_d, mask=keep, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + b * sz_b + offs_d, mask=keep, other=0.0).to(tl.float32)
    y = y * (z / (1.0 + tl.exp(-z)))
    tl.store(y_ptr + b * sy_b + offs_d, y.to(y_ptr.dtype.element_ty), mask=keep)


def ssm_decode_step_triton(
    state: Tensor, u: Tensor, delta: Tensor, A_log: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
    delta_bias: Tensor,
) -> Tensor:
    """Same as :func:`hymba.ops.ssm_step.ssm_decode_step` (softplus Δ, A = -exp(A_log), D skip,
    SiLU gate), in one kernel; ``state`` (b, d, n) is updated in place."""
    b, d = u.shape
    n = state.shape[-1]
    if state.stride(-1) != 1 or A_log.stride(-1) != 1:
        raise ValueError("the SSM state and A_log need a contiguous last dimension")
    for t in (u, delta, z, B, C):
        if t.stride(-1) != 1:
            raise ValueError("u, delta, z, B and C need a contiguous last dimension")
    y = torch.empty(b, d, dtype=u.dtype, device=u.device)
    _state_step_kernel[(b, triton.cdiv(d, BLOCK_D))](
        state, u, delta, A_log.contiguous(), B, C, D, z, delta_bias, y, d,
        state.stride(0), state.stride(1), u.stride(0), delta.stride(0), B.stride(0), C.stride(0),
        z.stride(0), y.stride(0), N=n, BD=BLOCK_D,
    )
    return y
