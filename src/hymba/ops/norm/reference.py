"""RMSNorm in PyTorch: the semantics every RMSNorm kernel reproduces, rounding for rounding."""

from __future__ import annotations

import torch
from torch import Tensor


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Llama-style RMSNorm: statistics in float32, normalised x cast back to x's dtype, then
    scaled by the weight (result in the promoted dtype of x and weight)."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def rms_norm_parts_reference(x: Tensor, sizes: tuple[int, int, int], weights: tuple[Tensor, Tensor, Tensor],
                             eps: float) -> tuple[Tensor, ...]:
    """Reference of :func:`hymba.ops.rms_norm_parts`: each part of the last dimension normalised
    with its own weight."""
    return tuple(rms_norm_reference(part, w, eps) for part, w in zip(x.split(list(sizes), -1), weights))


def add_rms_norm_reference(x: Tensor, delta: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Reference of :func:`hymba.ops.add_rms_norm`."""
    total = x + delta
    return total, rms_norm_reference(total, weight, eps)


def mean_of_rms_norms_reference(a: Tensor, b: Tensor, weight_a: Tensor, weight_b: Tensor, eps: float) -> Tensor:
    """Reference of :func:`hymba.ops.mean_of_rms_norms`."""
    return (rms_norm_reference(a, weight_a, eps) + rms_norm_reference(b, weight_b, eps)) / 2


def cast_to(x: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``x`` cast to ``dtype`` if given (through autograd: the backward sees the gradient as the
    cast passes it on)."""
    return x if dtype is None else x.to(dtype)
