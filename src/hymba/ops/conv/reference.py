"""Causal depthwise convolution in PyTorch: over a sequence, and one step on a stored state."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def causal_conv1d_reference(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    initial_state: Tensor | None = None,
    activation: bool = True,
) -> tuple[Tensor, Tensor]:
    """Reference of :func:`hymba.ops.causal_conv1d`: zero- or state-padded ``F.conv1d`` with
    groups."""
    batch, length, channels = x.shape
    kernel = weight.shape[-1]
    xt = x.transpose(1, 2)  # (b, c, L)
    if initial_state is None:
        prefix = xt.new_zeros(batch, channels, kernel)
    else:
        prefix = initial_state.to(xt.dtype)
    padded = torch.cat([prefix, xt], dim=-1)  # (b, c, K + L)
    y = F.conv1d(padded[..., 1:], weight[:, None, :], bias, groups=channels)
    if activation:
        y = F.silu(y)
    return y.transpose(1, 2), padded[..., -kernel:].contiguous()


def causal_conv1d_update_reference(
    x: Tensor, state: Tensor, weight: Tensor, bias: Tensor | None = None, activation: bool = True
) -> Tensor:
    """Reference of :func:`hymba.ops.causal_conv1d_update`."""
    state.copy_(torch.roll(state, shifts=-1, dims=-1))
    state[:, :, -1] = x
    y = (state * weight).sum(-1)
    if bias is not None:
        y = y + bias
    return F.silu(y) if activation else y
