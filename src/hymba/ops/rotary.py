"""Rotary position embedding applied to query/key heads: the reference and a fused Triton kernel."""

from __future__ import annotations

import torch
from torch import Tensor

from .triton_gate import needs_grad, use_triton


def apply_rotary_reference(x: Tensor, cos: Tensor, sin: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Half-split rotation: x·cos + [-x2, x1]·sin on (b, heads, L, d); cos/sin (1 or b, 1, L, d).
    The result in ``dtype`` if given (else the promoted dtype of x and the tables)."""
    x1, x2 = x.chunk(2, dim=-1)
    out = x * cos + torch.cat([-x2, x1], dim=-1) * sin
    return out if dtype is None else out.to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """:func:`apply_rotary_reference`; one Triton kernel on CUDA (one more for x's gradient; the
    tables get none there), computed in float32 and rounded once to the result's dtype."""
    if x.shape[-1] % 2 == 0 and use_triton(x, cos, sin, differentiable=True) and not needs_grad(cos, sin):
        from . import rotary_triton

        if needs_grad(x):
            return rotary_triton.apply_rotary_train(x, cos, sin, dtype)
        return rotary_triton.apply_rotary_triton(x, cos, sin, dtype)
    return apply_rotary_reference(x, cos, sin, dtype)
