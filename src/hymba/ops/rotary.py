"""Rotary position embedding applied to query/key heads: the reference and a fused Triton kernel."""

from __future__ import annotations

import torch
from torch import Tensor

from .triton_gate import use_triton


def apply_rotary_reference(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Half-split rotation: x·cos + [-x2, x1]·sin on (b, heads, L, d); cos/sin (1 or b, 1, L, d)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """:func:`apply_rotary_reference`; one Triton kernel on CUDA without autograd."""
    if x.shape[-1] % 2 == 0 and use_triton(x, cos, sin):
        from .rotary_triton import apply_rotary_triton

        return apply_rotary_triton(x, cos, sin)
    return apply_rotary_reference(x, cos, sin)
