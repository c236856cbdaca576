"""The linear layer in PyTorch: what every linear kernel computes, rounding for rounding."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def linear_reference(x: Tensor, weight: Tensor, bias: Tensor | None = None, residual: Tensor | None = None
                     ) -> Tensor:
    """``F.linear(x, weight, bias)``, rounded to its dtype, plus ``residual`` if given."""
    y = F.linear(x, weight, bias)
    return y if residual is None else residual + y
