"""Rotary position embedding in PyTorch (the half-split form)."""

from __future__ import annotations

import torch
from torch import Tensor


def apply_rotary_reference(x: Tensor, cos: Tensor, sin: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Half-split rotation: x·cos + [-x2, x1]·sin on (b, heads, L, d); cos/sin (1 or b, 1, L, d).
    The result in ``dtype`` if given (else the promoted dtype of x and the tables)."""
    x1, x2 = x.chunk(2, dim=-1)
    out = x * cos + torch.cat([-x2, x1], dim=-1) * sin
    return out if dtype is None else out.to(dtype)
