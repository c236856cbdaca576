"""The SwiGLU MLP's middle in PyTorch: SiLU(gate) · up, and the whole gated product."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def silu_mul_reference(gate: Tensor, up: Tensor) -> Tensor:
    """SiLU(gate) · up (the SiLU rounded to gate's dtype before the product)."""
    return F.silu(gate) * up


def swiglu_reference(x: Tensor, gate_weight: Tensor, up_weight: Tensor) -> Tensor:
    """``silu(x Wgᵀ) · (x Wuᵀ)``, each product rounded to x's dtype."""
    return silu_mul_reference(F.linear(x, gate_weight), F.linear(x, up_weight))
