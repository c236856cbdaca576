"""RMSNorm as a function (also over the three parts of a row, the SSM branch's Δ/B/C; fused with
the residual add; the mean of the two branch norms), and the SwiGLU gate: references and, on
CUDA, fused Triton kernels (with Triton backward kernels when autograd records them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .triton_gate import needs_grad, use_triton


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Llama-style RMSNorm: statistics in float32, normalised x cast back to x's dtype, then
    scaled by the weight (result in the promoted dtype of x and weight)."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def linear_input_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype a linear layer casts its input to under autocast on ``x``'s device (None
    outside autocast): a norm whose output only feeds linear layers may produce it in that dtype
    directly (``out_dtype``), the same values without a cast kernel either way (forward and
    backward)."""
    kind = x.device.type
    if not torch.amp.is_autocast_available(kind) or not torch.is_autocast_enabled(kind):
        return None
    return torch.get_autocast_dtype(kind)


def _cast(x: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``x`` cast to ``dtype`` if given (through autograd: the backward sees the gradient as the
    cast passes it on)."""
    return x if dtype is None else x.to(dtype)


def rms_norm(x: Tensor, weight: Tensor, eps: float, out_dtype: torch.dtype | None = None) -> Tensor:
    """RMSNorm over the last dimension, cast to ``out_dtype`` if given. On CUDA it is one Triton
    kernel (a row per program, the same roundings as the reference; one more for the backward);
    otherwise the reference."""
    if use_triton(x, weight, differentiable=True):
        from . import norm_triton

        if needs_grad(x, weight):
            return norm_triton.rms_norm_train(x, weight, eps, out_dtype)
        return norm_triton.rms_norm_triton(x, weight, eps, out_dtype)
    return _cast(rms_norm_reference(x, weight, eps), out_dtype)


def rms_norm_parts(x: Tensor, sizes: tuple[int, int, int], weights: tuple[Tensor, Tensor, Tensor], eps: float
                   ) -> tuple[Tensor, ...]:
    """Split the last dimension of ``x`` into three parts and RMS-normalise each with its own
    weight (one kernel on CUDA; the parts are then views of one tensor)."""
    if use_triton(x, *weights, differentiable=True):
        from . import norm_triton

        if needs_grad(x, *weights):
            return norm_triton.rms_norm_parts_train(x, sizes, weights, eps)
        return norm_triton.rms_norm_parts_triton(x, sizes, weights, eps)
    return tuple(rms_norm_reference(part, w, eps) for part, w in zip(x.split(list(sizes), -1), weights))


def add_rms_norm_reference(x: Tensor, delta: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Reference of :func:`add_rms_norm`."""
    total = x + delta
    return total, rms_norm_reference(total, weight, eps)


def add_rms_norm(x: Tensor, delta: Tensor, weight: Tensor, eps: float, out_dtype: torch.dtype | None = None
                 ) -> tuple[Tensor, Tensor]:
    """``(x + delta, rms_norm(x + delta))``: a residual step and the next norm (one kernel on
    CUDA, for ``x`` and ``delta`` of one shape; the sum in their promoted dtype, the norm cast to
    ``out_dtype`` if given)."""
    if x.shape == delta.shape and use_triton(x, delta, weight, differentiable=True):
        from . import norm_triton

        if needs_grad(x, delta, weight):
            return norm_triton.add_rms_norm_train(x, delta, weight, eps, out_dtype)
        return norm_triton.add_rms_norm_triton(x, delta, weight, eps, out_dtype)
    total, normed = add_rms_norm_reference(x, delta, weight, eps)
    return total, _cast(normed, out_dtype)


def mean_of_rms_norms_reference(a: Tensor, b: Tensor, weight_a: Tensor, weight_b: Tensor, eps: float) -> Tensor:
    """Reference of :func:`mean_of_rms_norms`."""
    return (rms_norm_reference(a, weight_a, eps) + rms_norm_reference(b, weight_b, eps)) / 2


def mean_of_rms_norms(a: Tensor, b: Tensor, weight_a: Tensor, weight_b: Tensor, eps: float,
                      out_dtype: torch.dtype | None = None) -> Tensor:
    """``(rms_norm(a) + rms_norm(b)) / 2``, the hybrid mixer's fusion of its two branches (one
    kernel on CUDA, for inputs of one shape and dtype and weights of one dtype), cast to
    ``out_dtype`` if given."""
    if (a.shape == b.shape and a.dtype == b.dtype and weight_a.dtype == weight_b.dtype
            and use_triton(a, b, weight_a, weight_b, differentiable=True)):
        from . import norm_triton

        if needs_grad(a, b, weight_a, weight_b):
            return norm_triton.mean_of_rms_norms_train(a, b, weight_a, weight_b, eps, out_dtype)
        return norm_triton.mean_of_rms_norms_triton(a, b, weight_a, weight_b, eps, out_dtype)
    return _cast(mean_of_rms_norms_reference(a, b, weight_a, weight_b, eps), out_dtype)


def silu_mul(gate: Tensor, up: Tensor) -> Tensor:
    """SiLU(gate) · up, the SwiGLU MLP's middle (one kernel on CUDA, one more for the backward)."""
    if gate.shape == up.shape and gate.dtype == up.dtype and use_triton(gate, up, differentiable=True):
        from . import norm_triton

        if needs_grad(gate, up):
            return norm_triton.silu_mul_train(gate, up)
        return norm_triton.silu_mul_triton(gate, up)
    return F.silu(gate) * up
