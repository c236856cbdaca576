"""Tensors derived from parameters (a zero-padded weight, the SSM's A = -exp(A_log)), computed
once and kept while autograd does not need them and the parameter is unchanged.

Without this, every forward recomputes them in a few tiny kernels per layer, whose launches cost
more than their work. An entry lives as long as its parameter and is redone after an
in-place change (the tensor's version counter), a new dtype or device (a new tensor).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

_CACHE = WeakTensorKeyDictionary()


def derived(t: Tensor, name: str, make: Callable[[Tensor], Tensor]) -> Tensor:
    """``make(t)``, cached under ``name`` for ``t`` where that is safe: when autograd does not
    track ``t`` here (no grad mode or no ``requires_grad``) and ``t`` keeps a version counter
    (not an inference tensor). ``make`` must depend on ``t`` alone."""
    if (torch.is_grad_enabled() and t.requires_grad) or t.is_inference():
        return make(t)
    entries = _CACHE.get(t)
    if entries is None:
        entries = _CACHE[t] = {}
    hit = entries.get(name)
    if hit is None or hit[0] != t._version:
        hit = entries[name] = (t._version, make(t))
    return hit[1]
