"""The linear layer in PyTorch: what every linear kernel computes, rounding for rounding."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def linear_reference(x: Tensor, weight: Tensor, bias: Tensor | None = None, residual: Tensor | None = None
                     ) -> Tensor:
    """``F.linear(x, weight, bias)``, rounded to its dtype, plus ``residual`` if given."""
    y = F.linear(x, weight, bias)
    return y if residual is None else residual + y


def int8_linear_reference(x: Tensor, qdata: Tensor, scale: Tensor, bias: Tensor | None = None,
                          residual: Tensor | None = None) -> Tensor:
    """The product with an int8 weight ``qdata`` (N, K) and per-output-channel scales ``scale``
    (N,), ``W = qdata · scale[:, None]``: in float32 ``(x qdataᵀ) · scale + bias``, rounded once to
    x's dtype, plus ``residual`` if given (as :func:`linear_reference` adds it)."""
    y = F.linear(x.float(), qdata.float()) * scale.float()
    if bias is not None:
        y = y + bias.float()
    y = y.to(x.dtype)
    return y if residual is None else residual + y
