"""The SwiGLU MLP before its down projection: ``silu(x Wgᵀ) · (x Wuᵀ)`` (:func:`swiglu`), and its
elementwise middle SiLU(gate) · up (:func:`silu_mul`) for gate and up products computed apart.

For a decode step's rows on CUDA both products and the gate run in one tensor-core kernel (the
gated form of :func:`hymba.ops.linear`'s kernel, chosen by :func:`hymba.ops.linear.kernel_for`);
otherwise the two products run as :func:`hymba.ops.linear` runs them on cuBLAS, and the middle is
one Triton kernel on CUDA (one more for the backward, :mod:`hymba.ops.swiglu.triton`), else its
reference (:mod:`hymba.ops.swiglu.reference`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..linear import DOT_MAX_ROWS, is_quantized, kernel_for, linear, torch_linear
from ..linear.quantized import int8_rows
from ..switches import needs_grad, use_triton
from .reference import silu_mul_reference, swiglu_reference


def silu_mul(gate: Tensor, up: Tensor) -> Tensor:
    """SiLU(gate) · up, the SwiGLU MLP's middle (one kernel on CUDA, one more for the backward)."""
    if gate.shape == up.shape and gate.dtype == up.dtype and use_triton(gate, up, differentiable=True):
        from . import triton

        if needs_grad(gate, up):
            return triton.silu_mul_train(gate, up)
        return triton.silu_mul_triton(gate, up)
    return silu_mul_reference(gate, up)


def swiglu(x: Tensor, gate_weight: Tensor, up_weight: Tensor) -> Tensor:
    """``silu(x Wgᵀ) · (x Wuᵀ)``, the SwiGLU MLP before its down projection (one kernel under the
    conditions of :func:`hymba.ops.linear`, with the same roundings as the unfused form).
    Int8 weights (torchao's, per output channel) of up to ``DOT_MAX_ROWS`` rows on CUDA run the
    same kernel on the int8 data; other quantized weights take :func:`hymba.ops.linear` apart (its
    quantized paths) and the middle."""
    if is_quantized(gate_weight) or is_quantized(up_weight):
        gate, up = int8_rows(gate_weight), int8_rows(up_weight)
        if (gate is not None and up is not None and gate[0].shape == up[0].shape
                and x.dtype == gate_weight.dtype == up_weight.dtype and use_triton(x)
                and 0 < math.prod(x.shape[:-1]) <= DOT_MAX_ROWS and not torch.is_autocast_enabled(x.device.type)):
            from ..linear.triton import swiglu_dot

            return swiglu_dot(x, gate[0], up[0], gate_scale=gate[1], up_scale=up[1])
        return silu_mul(linear(x, gate_weight), linear(x, up_weight))
    if use_triton(x, gate_weight, up_weight) and kernel_for(x, gate_weight, up_weight) is not None:
        from ..linear.triton import swiglu_dot

        return swiglu_dot(x, gate_weight, up_weight)
    return silu_mul(torch_linear(x, gate_weight), torch_linear(x, up_weight))


__all__ = ["silu_mul", "silu_mul_reference", "swiglu", "swiglu_reference"]
