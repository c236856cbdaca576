"""RMSNorm as a function: the reference and, for inference on CUDA, one fused Triton kernel."""

from __future__ import annotations

import torch
from torch import Tensor

from .triton_gate import use_triton


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Llama-style RMSNorm: statistics in float32, normalised x cast back to x's dtype, then
    scaled by the weight (result in the promoted dtype of x and weight)."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last dimension. On CUDA without autograd it is one Triton kernel (a
    row per program, the same roundings as the reference); otherwise the reference."""
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if not needs_grad and use_triton(x):
        from .norm_triton import rms_norm_triton

        return rms_norm_triton(x, weight, eps)
    return rms_norm_reference(x, weight, eps)
