"""The readable selective scan (Mamba-1): one time step after another.

This is the definition every faster implementation is tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def compute_dtype(x: Tensor) -> torch.dtype:
    """The scan runs in float32, or float64 when given float64 inputs."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def prepare_delta(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    """Δ = softplus(δ_raw + b) in the compute dtype (softplus is the identity above 20)."""
    delta = delta.to(compute_dtype(delta))
    if delta_bias is not None:
        delta = delta + delta_bias.to(delta.dtype)
    return F.softplus(delta) if delta_softplus else delta


def finish_output(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """y + D·u, then the SiLU gate, cast back to the input dtype."""
    if D is not None:
        y = y + u.to(y.dtype) * D.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(u.dtype)


def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Sequential selective scan.

    Shapes: ``u, delta, z``: (batch, length, channels); ``A``: (channels, state);
    ``B, C``: (batch, length, state) shared by all channels; ``D, delta_bias``: (channels,);
    ``initial_state``: (batch, channels, state).

    For every channel c, with s_{-1} = initial_state (zero by default)::

        s_t = exp(Δ_t A) ⊙ s_{t-1} + Δ_t B_t u_t
        y_t = <s_t, C_t> + D u_t,   then y_t ← y_t · SiLU(z_t)

    Returns ``(y, final_state)``: y in u's dtype, the final state in the compute dtype.
    """
    dtype = compute_dtype(u)
    batch, length, channels = u.shape
    delta = prepare_delta(delta, delta_bias, delta_softplus)
    A = A.to(dtype)
    u_c, B, C = u.to(dtype), B.to(dtype), C.to(dtype)
    state = (
        torch.zeros(batch, channels, A.shape[-1], dtype=dtype, device=u.device)
        if initial_state is None
        else initial_state.to(dtype)
    )
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, t, :, None] * A)  # (b, c, n)
        drive = (delta[:, t] * u_c[:, t])[:, :, None] * B[:, t, None, :]  # (b, c, n)
        state = decay * state + drive
        ys.append((state * C[:, t, None, :]).sum(-1))
    y = torch.stack(ys, dim=1) if ys else u_c.new_zeros(batch, 0, channels)
    return finish_output(y, u, D, z), state
