"""Rotary position embedding applied to query/key heads: the reference
(:mod:`hymba.ops.rotary.reference`) and, on CUDA, a Triton kernel (:mod:`hymba.ops.rotary.triton`,
whose rotation helpers the decode attention and K/V store kernels share)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..switches import needs_grad, use_triton
from .reference import apply_rotary_reference


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """:func:`apply_rotary_reference`; one Triton kernel on CUDA (one more for x's gradient; the
    tables get none there), computed in float32 and rounded once to the result's dtype."""
    if x.shape[-1] % 2 == 0 and use_triton(x, cos, sin, differentiable=True) and not needs_grad(cos, sin):
        from . import triton

        if needs_grad(x):
            return triton.apply_rotary_train(x, cos, sin, dtype)
        return triton.apply_rotary_triton(x, cos, sin, dtype)
    return apply_rotary_reference(x, cos, sin, dtype)


__all__ = ["apply_rotary", "apply_rotary_reference"]
