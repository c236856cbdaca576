"""Causal depthwise convolution (the Mamba branch's short conv) and its one-step update.

The conv state is the last ``kernel`` pre-conv inputs, oldest first: (batch, channels, kernel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .triton_gate import needs_grad, use_triton


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    initial_state: Tensor | None = None,
    activation: bool = True,
) -> tuple[Tensor, Tensor]:
    """Depthwise causal conv over time.

    ``x``: (batch, length, channels); ``weight``: (channels, kernel), oldest tap first;
    ``initial_state``: (batch, channels, kernel) inputs that precede ``x`` (zeros by default).
    ``y[t, c] = act(bias[c] + Σ_k weight[c, k] · x[t - K + 1 + k, c])``, act = SiLU.
    Returns ``(y, final_state)`` with y like x and the state holding the last ``kernel`` inputs.
    One Triton kernel on CUDA (:mod:`hymba.ops.conv_triton`; one more for the backward, from a
    zero initial state over at least ``kernel`` steps), else the reference.
    """
    if use_triton(x, weight, bias, initial_state, differentiable=True):
        from . import conv_triton

        if not needs_grad(x, weight, bias, initial_state):
            return conv_triton.causal_conv1d_triton(x, weight, bias, initial_state, activation)
        if initial_state is None and x.shape[1] >= weight.shape[-1]:
            return conv_triton.causal_conv1d_train(x, weight, bias, activation)
    return causal_conv1d_reference(x, weight, bias, initial_state, activation)


def causal_conv1d_reference(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    initial_state: Tensor | None = None,
    activation: bool = True,
) -> tuple[Tensor, Tensor]:
    """Reference of :func:`causal_conv1d`: zero- or state-padded ``F.conv1d`` with groups."""
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


def causal_conv1d_update(
    x: Tensor, state: Tensor, weight: Tensor, bias: Tensor | None = None, activation: bool = True
) -> Tensor:
    """One step: shift ``state`` (batch, channels, kernel) left in place, append ``x`` (batch,
    channels), and return the conv output for that step (batch, channels). One Triton kernel on
    CUDA without autograd (:mod:`hymba.ops.ssm_step_triton`), else the reference."""
    if use_triton(x, state, weight, bias):
        from .ssm_step_triton import causal_conv1d_update_triton

        return causal_conv1d_update_triton(x, state, weight, bias, activation)
    return causal_conv1d_update_reference(x, state, weight, bias, activation)


def causal_conv1d_update_reference(
    x: Tensor, state: Tensor, weight: Tensor, bias: Tensor | None = None, activation: bool = True
) -> Tensor:
    """Reference of :func:`causal_conv1d_update`."""
    state.copy_(torch.roll(state, shifts=-1, dims=-1))
    state[:, :, -1] = x
    y = (state * weight).sum(-1)
    if bias is not None:
        y = y + bias
    return F.silu(y) if activation else y
