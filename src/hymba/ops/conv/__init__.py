"""Causal depthwise convolution (the Mamba branch's short conv) and its one-step update: the
references (:mod:`hymba.ops.conv.reference`) and Triton kernels (:mod:`hymba.ops.conv.triton`).

The conv state is the last ``kernel`` pre-conv inputs, oldest first: (batch, channels, kernel).
"""

from __future__ import annotations

from torch import Tensor

from ..switches import needs_grad, use_triton
from .reference import causal_conv1d_reference, causal_conv1d_update_reference


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
    One Triton kernel on CUDA (one more for the backward, from a zero initial state over at least
    ``kernel`` steps), else the reference.
    """
    if use_triton(x, weight, bias, initial_state, differentiable=True):
        from . import triton

        if not needs_grad(x, weight, bias, initial_state):
            return triton.causal_conv1d_triton(x, weight, bias, initial_state, activation)
        if initial_state is None and x.shape[1] >= weight.shape[-1]:
            return triton.causal_conv1d_train(x, weight, bias, activation)
    return causal_conv1d_reference(x, weight, bias, initial_state, activation)


def causal_conv1d_update(
    x: Tensor, state: Tensor, weight: Tensor, bias: Tensor | None = None, activation: bool = True
) -> Tensor:
    """One step: shift ``state`` (batch, channels, kernel) left in place, append ``x`` (batch,
    channels), and return the conv output for that step (batch, channels). One Triton kernel on
    CUDA without autograd, else the reference."""
    if use_triton(x, state, weight, bias):
        from .triton import causal_conv1d_update_triton

        return causal_conv1d_update_triton(x, state, weight, bias, activation)
    return causal_conv1d_update_reference(x, state, weight, bias, activation)


__all__ = ["causal_conv1d", "causal_conv1d_reference", "causal_conv1d_update", "causal_conv1d_update_reference"]
