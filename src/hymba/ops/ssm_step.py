"""One step of the selective scan on a stored state (the decode-time SSM update).

Same recurrence as :func:`hymba.ops.scan.reference.selective_scan_reference` for a single time
step; the state is updated in place so a decode loop never reallocates it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan.reference import compute_dtype
from .triton_gate import use_triton


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
