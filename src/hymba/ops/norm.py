"""RMSNorm as a function (also over the three parts of a row, the SSM branch's Δ/B/C), and the
SwiGLU gate: references and, for inference on CUDA, fused Triton kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
    if use_triton(x, weight):
        from .norm_triton import rms_norm_triton

        return rms_norm_triton(x, weight, eps)
    return rms_norm_reference(x, weight, eps)


def rms_norm_parts(x: Tensor, sizes: tuple[int, int, int], weights: tuple[Tensor, Tensor, Tensor], eps: float
                   ) -> tuple[Tensor, ...]:
    """Split the last dimension of ``x`` into three parts and RMS-normalise each with its own
    weight (one kernel on CUDA without autograd; the parts are then views of one tensor)."""
    if use_triton(x, *weights):
        from .norm_triton import rms_norm_parts_triton

        return rms_norm_parts_triton(x, sizes, weights, eps)
    return tuple(rms_norm_reference(part, w, eps) for part, w in zip(x.split(list(sizes), -1), weights))


def silu_mul(gate: Tensor, up: Tensor) -> Tensor:
    """SiLU(gate) · up, the SwiGLU MLP's middle (one kernel on CUDA without autograd)."""
    if gate.shape == up.shape and gate.dtype == up.dtype and use_triton(gate, up):
        from .norm_triton import silu_mul_triton

        return silu_mul_triton(gate, up)
    return F.silu(gate) * up
