"""The SSM branch's decode-time kernels: one step of the selective scan on the stored state
(:func:`ssm_decode_step`), and the whole branch step in two fused kernels for a few rows
(:func:`fused_mamba_step`).

The sequence of the branch's stages (conv update, x_proj, the Δ/B/C norms, dt_proj, the state
update) belongs to the layer (:meth:`hymba.model.ssm.MambaBranch.step`), which runs it stage by
stage through the ops or, where :func:`fused_mamba_step_supported` says so, as
:func:`fused_mamba_step`. References: :mod:`hymba.ops.ssm_step.reference`; kernels:
:mod:`hymba.ops.ssm_step.triton`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..linear import is_quantized
from ..linear.quantized import int8_rows
from ..switches import use_triton
from .reference import selective_state_update, ssm_decode_step_reference

# Up to this many rows the branch's decode step may run as the two fused kernels: each of their
# programs re-reads its share of the x_proj and dt_proj weights for every row, which costs little
# for a few rows only.
FUSED_MAX_ROWS = 4


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def ssm_decode_step(
    state: Tensor, u: Tensor, delta: Tensor, A_log: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
    delta_bias: Tensor,
) -> Tensor:
    """The SSM branch's decode update from its parameters as stored (A = -exp(A_log)):
    :func:`selective_state_update` with softplus Δ, the D skip and the SiLU gate; ``state``
    (b, d_inner, d_state) is updated in place. On CUDA it is one Triton kernel that also converts
    the parameters; otherwise the reference."""
    if _power_of_two(state.shape[-1]) and use_triton(u, state, delta, A_log, B, C, D, z, delta_bias):
        from .triton import ssm_decode_step_triton

        return ssm_decode_step_triton(state, u, delta, A_log, B, C, D, z, delta_bias)
    return ssm_decode_step_reference(state, u, delta, A_log, B, C, D, z, delta_bias)


def _projection(weight: Tensor) -> tuple[Tensor, Tensor | None] | None:
    """A projection weight as the fused kernels take it: (the weight, None) if plain, (int8 data,
    per-output-feature scales) for a torchao int8 weight-only tensor, None for other quantized
    weights (which the kernels cannot read)."""
    if not is_quantized(weight):
        return weight, None
    return int8_rows(weight)


def fused_mamba_step_supported(
    x: Tensor, z: Tensor, conv_state: Tensor, ssm_state: Tensor, conv_weight: Tensor, conv_bias: Tensor | None,
    x_proj_weight: Tensor, norm_weights: tuple[Tensor, Tensor, Tensor] | None, eps: float, dt_weight: Tensor,
    dt_bias: Tensor, A_log: Tensor, D: Tensor,
) -> bool:
    """Whether :func:`fused_mamba_step` runs these arguments (the same as its own): the Triton
    kernels may run (:func:`hymba.ops.switches.use_triton`), up to ``FUSED_MAX_ROWS`` rows, a
    power-of-two state size, the conv, x_proj, dt_proj and norm weights and ``z`` in x's dtype, x,
    z and the SSM state with unit last stride, no autocast; x_proj and dt_proj plain or int8 per
    output channel (torchao's int8 weight-only tensors), no other quantized weight."""
    weights = (conv_weight, x_proj_weight, dt_weight, *(norm_weights or ()))
    if any(is_quantized(w) for w in (conv_weight, *(norm_weights or ()))):
        return False
    if _projection(x_proj_weight) is None or _projection(dt_weight) is None:
        return False
    return (x.shape[0] <= FUSED_MAX_ROWS and _power_of_two(ssm_state.shape[-1]) and z.dtype == x.dtype
            and all(t.dtype == x.dtype for t in weights)
            and all(t.stride(-1) == 1 for t in (x, z, ssm_state))
            and not torch.is_autocast_enabled(x.device.type)
            and use_triton(x, z, conv_state, ssm_state, *weights, conv_bias, dt_bias, A_log, D))


def fused_mamba_step(
    x: Tensor, z: Tensor, conv_state: Tensor, ssm_state: Tensor, conv_weight: Tensor, conv_bias: Tensor | None,
    x_proj_weight: Tensor, norm_weights: tuple[Tensor, Tensor, Tensor] | None, eps: float, dt_weight: Tensor,
    dt_bias: Tensor, A_log: Tensor, D: Tensor,
) -> Tensor:
    """One token per row (``x``, ``z``: (b, d_inner)) through the whole SSM branch in two Triton
    kernels, with the roundings of the stages run one by one:

    ``xc = causal_conv1d_update(x, conv_state, conv_weight, conv_bias)`` (SiLU);
    ``dt, B, C = rms_norm_parts(xc x_projᵀ, (r, n, n), norm_weights, eps)`` (a plain split without
    norm weights); ``y = ssm_decode_step(ssm_state, xc, dt dt_weightᵀ, A_log, B, C, D, z, dt_bias)``.

    ``conv_state`` (b, d_inner, d_conv) and ``ssm_state`` (b, d_inner, d_state) are updated in
    place. Only where :func:`fused_mamba_step_supported` holds. Int8 x_proj / dt_proj weights
    (torchao's) run as :func:`hymba.ops.linear.int8_linear_reference` computes their products."""
    from .triton import fused_mamba_step_triton

    (x_w, x_scale), (dt_w, dt_scale) = _projection(x_proj_weight), _projection(dt_weight)
    return fused_mamba_step_triton(x, z, conv_state, ssm_state, conv_weight, conv_bias, x_w, norm_weights,
                                   eps, dt_w, dt_bias, A_log, D, x_proj_scale=x_scale, dt_scale=dt_scale)


__all__ = [
    "FUSED_MAX_ROWS",
    "fused_mamba_step",
    "fused_mamba_step_supported",
    "selective_state_update",
    "ssm_decode_step",
    "ssm_decode_step_reference",
]
