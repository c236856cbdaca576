"""RMSNorm as a function: alone, over the three parts of a row (the SSM branch's Δ/B/C), fused
with the residual add, and the mean of the two branch norms. Each runs as one Triton kernel on
CUDA (one more for the backward when autograd records it, :mod:`hymba.ops.norm.triton`), else as
its reference (:mod:`hymba.ops.norm.reference`)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..switches import needs_grad, use_triton
from .reference import (
    add_rms_norm_reference,
    cast_to,
    mean_of_rms_norms_reference,
    rms_norm_parts_reference,
    rms_norm_reference,
)


def linear_input_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype a linear layer casts its input to under autocast on ``x``'s device (None
    outside autocast): a norm whose output only feeds linear layers may produce it in that dtype
    directly (``out_dtype``), the same values without a cast kernel either way (forward and
    backward)."""
    kind = x.device.type
    if not torch.amp.is_autocast_available(kind) or not torch.is_autocast_enabled(kind):
        return None
    return torch.get_autocast_dtype(kind)


def rms_norm(x: Tensor, weight: Tensor, eps: float, out_dtype: torch.dtype | None = None) -> Tensor:
    """RMSNorm over the last dimension, cast to ``out_dtype`` if given. On CUDA it is one Triton
    kernel (a row per program, the same roundings as the reference; one more for the backward);
    otherwise the reference."""
    if use_triton(x, weight, differentiable=True):
        from . import triton

        if needs_grad(x, weight):
            return triton.rms_norm_train(x, weight, eps, out_dtype)
        return triton.rms_norm_triton(x, weight, eps, out_dtype)
    return cast_to(rms_norm_reference(x, weight, eps), out_dtype)


def rms_norm_parts(x: Tensor, sizes: tuple[int, int, int], weights: tuple[Tensor, Tensor, Tensor], eps: float
                   ) -> tuple[Tensor, ...]:
    """Split the last dimension of ``x`` into three parts and RMS-normalise each with its own
    weight (one kernel on CUDA; the parts are then views of one tensor)."""
    if use_triton(x, *weights, differentiable=True):
        from . import triton

        if needs_grad(x, *weights):
            return triton.rms_norm_parts_train(x, sizes, weights, eps)
        return triton.rms_norm_parts_triton(x, sizes, weights, eps)
    return rms_norm_parts_reference(x, sizes, weights, eps)


def add_rms_norm(x: Tensor, delta: Tensor, weight: Tensor, eps: float, out_dtype: torch.dtype | None = None
                 ) -> tuple[Tensor, Tensor]:
    """``(x + delta, rms_norm(x + delta))``: a residual step and the next norm (one kernel on
    CUDA, for ``x`` and ``delta`` of one shape; the sum in their promoted dtype, the norm cast to
    ``out_dtype`` if given)."""
    if x.shape == delta.shape and use_triton(x, delta, weight, differentiable=True):
        from . import triton

        if needs_grad(x, delta, weight):
            return triton.add_rms_norm_train(x, delta, weight, eps, out_dtype)
        return triton.add_rms_norm_triton(x, delta, weight, eps, out_dtype)
    total, normed = add_rms_norm_reference(x, delta, weight, eps)
    return total, cast_to(normed, out_dtype)


def mean_of_rms_norms(a: Tensor, b: Tensor, weight_a: Tensor, weight_b: Tensor, eps: float,
                      out_dtype: torch.dtype | None = None) -> Tensor:
    """``(rms_norm(a) + rms_norm(b)) / 2``, the hybrid mixer's fusion of its two branches (one
    kernel on CUDA, for inputs of one shape and dtype and weights of one dtype), cast to
    ``out_dtype`` if given."""
    if (a.shape == b.shape and a.dtype == b.dtype and weight_a.dtype == weight_b.dtype
            and use_triton(a, b, weight_a, weight_b, differentiable=True)):
        from . import triton

        if needs_grad(a, b, weight_a, weight_b):
            return triton.mean_of_rms_norms_train(a, b, weight_a, weight_b, eps, out_dtype)
        return triton.mean_of_rms_norms_triton(a, b, weight_a, weight_b, eps, out_dtype)
    return cast_to(mean_of_rms_norms_reference(a, b, weight_a, weight_b, eps), out_dtype)


__all__ = [
    "add_rms_norm",
    "add_rms_norm_reference",
    "linear_input_dtype",
    "mean_of_rms_norms",
    "mean_of_rms_norms_reference",
    "rms_norm",
    "rms_norm_parts",
    "rms_norm_parts_reference",
    "rms_norm_reference",
]
