"""One step of the selective scan on a stored state (the decode-time SSM update), and the whole
SSM branch's decode step (conv, x_proj, Δ/B/C norms, dt_proj, state update).

Same recurrence as :func:`hymba.ops.scan.reference.selective_scan_reference` for a single time
step; the state is updated in place so a decode loop never reallocates it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .conv import causal_conv1d_update
from .linear import linear
from .norm import rms_norm_parts
from .scan.reference import compute_dtype
from .triton_gate import use_triton

# Up to this many rows the SSM branch's decode step runs as two fused kernels on CUDA (each
# program re-reads its share of the x_proj and dt_proj weights, cheap for a few rows only).
FUSED_MAX_ROWS = 4


def selective_state_update(
    state: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
) -> Tensor:
    """Advance ``state`` (batch, channels, d_state) by one token, in place; return y (batch, channels).

    ``u, delta, z``: (batch, channels); ``A``: (channels, d_state); ``B, C``: (batch, d_state);
    ``D, delta_bias``: (channels,). Computes in float32 (float64 for float64 inputs)::

        Δ = softplus(δ + b);  s ← exp(Δ A) ⊙ s + Δ B u;  y = (<s, C> + D u) · SiLU(z)
    """
    dtype = compute_dtype(u)
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    u_c = u.to(dtype)
    s = state.to(dtype)
    s = torch.exp(delta[..., None] * A.to(dtype)) * s + (delta * u_c)[..., None] * B.to(dtype)[:, None, :]
    state.copy_(s)
    y = (s * C.to(dtype)[:, None, :]).sum(-1)
    if D is not None:
        y = y + u_c * D.to(dtype)
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype)


def ssm_decode_step(
    state: Tensor, u: Tensor, delta: Tensor, A_log: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
    delta_bias: Tensor,
) -> Tensor:
    """The SSM branch's decode update from its parameters as stored (A = -exp(A_log)):
    :func:`selective_state_update` with softplus Δ, the D skip and the SiLU gate. On CUDA it is
    one Triton kernel that also converts the parameters; otherwise the reference above."""
    n = state.shape[-1]
    if n & (n - 1) == 0 and use_triton(u, state, delta, A_log, B, C, D, z, delta_bias):
        from .ssm_step_triton import ssm_decode_step_triton

        return ssm_decode_step_triton(state, u, delta, A_log, B, C, D, z, delta_bias)
    return selective_state_update(
        state, u, delta, -torch.exp(A_log.float()), B, C, D.float(), z, delta_bias=delta_bias.float(),
        delta_softplus=True,
    )


class MambaStepWeights(NamedTuple):
    """The SSM branch's parameters as a decode step uses them."""

    conv_weight: Tensor  # (d_inner, d_conv), oldest tap first
    conv_bias: Tensor | None  # (d_inner,)
    x_proj_weight: Tensor  # (dt_rank + 2 d_state, d_inner)
    norm_weights: tuple[Tensor, Tensor, Tensor] | None  # the Δ, B, C RMSNorm weights, if any
    eps: float
    dt_weight: Tensor  # (d_inner, dt_rank)
    dt_bias: Tensor  # (d_inner,), added in float32 before the softplus
    A_log: Tensor  # (d_inner, d_state)
    D: Tensor  # (d_inner,)


def mamba_decode_step(x: Tensor, z: Tensor, conv_state: Tensor, ssm_state: Tensor, w: MambaStepWeights) -> Tensor:
    """One token per row (``x``, ``z``: (b, d_inner)) through the SSM branch: conv update,
    x_proj, the Δ/B/C norms, dt_proj and :func:`ssm_decode_step`; ``conv_state`` (b, d_inner,
    d_conv) and ``ssm_state`` (b, d_inner, d_state) are updated in place. On CUDA, for up to
    FUSED_MAX_ROWS rows with weights in x's dtype, no autocast and x, z and the SSM state with unit
    last stride, two Triton kernels (:func:`hymba.ops.ssm_step_triton.mamba_decode_step_triton`);
    otherwise the stages one by one."""
    weights = [t for t in w if isinstance(t, Tensor)] + list(w.norm_weights or ())
    n = ssm_state.shape[-1]
    if (x.shape[0] <= FUSED_MAX_ROWS and n & (n - 1) == 0 and z.dtype == x.dtype
            and all(t.dtype == x.dtype for t in (w.conv_weight, w.x_proj_weight, w.dt_weight, *(w.norm_weights or ())))
            and all(t.stride(-1) == 1 for t in (x, z, ssm_state))
            and not torch.is_autocast_enabled(x.device.type)
            and use_triton(x, z, conv_state, ssm_state, *weights)):
        from .ssm_step_triton import mamba_decode_step_triton

        return mamba_decode_step_triton(x, z, conv_state, ssm_state, w)
    return mamba_decode_step_unfused(x, z, conv_state, ssm_state, w)


def mamba_decode_step_unfused(x: Tensor, z: Tensor, conv_state: Tensor, ssm_state: Tensor, w: MambaStepWeights
                              ) -> Tensor:
    """:func:`mamba_decode_step` stage by stage (each stage its own kernel on CUDA, its reference
    elsewhere)."""
    xc = causal_conv1d_update(x, conv_state, w.conv_weight, w.conv_bias)
    proj = linear(xc, w.x_proj_weight)
    sizes = (w.dt_weight.shape[1], ssm_state.shape[-1], ssm_state.shape[-1])
    if w.norm_weights is None:
        dt, B, C = proj.split(list(sizes), dim=-1)
    else:
        dt, B, C = rms_norm_parts(proj, sizes, w.norm_weights, w.eps)
    return ssm_decode_step(ssm_state, xc, linear(dt, w.dt_weight), w.A_log, B, C, w.D, z, w.dt_bias)
