"""Weights quantized by torchao (``hymba.quantize``): how the linear ops recognise them.

A quantized weight is a torchao tensor subclass: its ``F.linear`` runs torchao's own kernels (or
dequantizes), and the plain-weight kernels of these ops must never see it. This module only
inspects such tensors; it never imports torchao (an optional dependency): a tensor can only be a
torchao tensor once torchao has been imported.
"""

from __future__ import annotations

import sys

from torch import Tensor


def is_quantized(weight: Tensor | None) -> bool:
    """Whether ``weight`` is a torchao quantized tensor (any format)."""
    utils = sys.modules.get("torchao.utils")
    return weight is not None and utils is not None and isinstance(weight, utils.TorchAOBaseTensor)


def int8_rows(weight: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(qdata, scale)`` of a torchao int8 weight-only tensor quantized per output channel
    (``Int8WeightOnlyConfig(granularity=PerRow())``, symmetric: ``W ≈ qdata · scale[:, None]``):
    the (N, K) int8 matrix and the (N,) float32 scales. None for any other weight (another format,
    per-group or per-tensor scales, activation quantization or pre-scaling), which then runs
    through torchao's ``F.linear``."""
    quant = sys.modules.get("torchao.quantization")
    if quant is None or not isinstance(weight, getattr(quant, "Int8Tensor", ())):
        return None
    q, scale = weight.qdata, weight.scale
    if getattr(weight, "act_quant_kwargs", None) is not None or getattr(weight, "act_pre_scale", None) is not None:
        return None
    if q.dim() != 2 or list(weight.block_size) != [1, q.shape[1]] or scale.numel() != q.shape[0]:
        return None
    return q, scale.reshape(-1)
