"""One step of the selective scan on a stored state, in PyTorch.

Same recurrence as :func:`hymba.ops.scan.reference.selective_scan_reference` for a single time
step; the state is updated in place so a decode loop never reallocates it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..scan.reference import compute_dtype


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


def ssm_decode_step_reference(
    state: Tensor, u: Tensor, delta: Tensor, A_log: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
    delta_bias: Tensor,
) -> Tensor:
    """Reference of :func:`hymba.ops.ssm_decode_step`: :func:`selective_state_update` on the
    parameters as stored (A = -exp(A_log)) with softplus Δ, the D skip and the SiLU gate."""
    return selective_state_update(
        state, u, delta, -torch.exp(A_log.float()), B, C, D.float(), z, delta_bias=delta_bias.float(),
        delta_softplus=True,
    )
