"""Weight-only quantization for inference through torchao (``pip install 'hymba[quant]'``).

:func:`quantize` replaces the weights of the decoder layers' linear layers (the fused input
projection, the mixer's output projection, the SSM branch's x and Δ projections, the MLP) by
torchao's quantized tensors, in place; :func:`hymba.ops.linear` then runs them on the paths that
take them. The embeddings and the tied output head, the norms, the conv and the SSM parameters
(A, D, Δ bias) keep their dtype: the head shares the embedding matrix, and the SSM's parameters are
few and feed the recurrence, where errors would accumulate over the sequence.

- ``"int8"``: symmetric int8 per output channel (``Int8WeightOnlyConfig(granularity=PerRow())``);
  on CUDA a decode step's products run the Triton kernels on the int8 data.
- ``"int4"``: asymmetric int4 in groups of ``group_size`` input features (128, else the largest
  of 64 and 32 that divides the layer's width): torchao's tinygemm format on CUDA (which computes
  in bfloat16: the weights are rounded to bfloat16 before quantizing and activations are
  converted by torchao), and on CPU torchao's CPU int4 format (``PrototypeInt4WeightOnlyConfig``, a
  torchao prototype, which also needs output widths that are multiples of 16). The SSM branch's x
  and Δ projections take int8 instead, as does any layer whose widths int4 cannot take: they are
  1.6% of the 1.5B model's decoder linear weights, the Δ projection's rows (the 1.5B model's rank of 100) fit no group
  size, and with int8 (or plain) weights the SSM decode step keeps its two fused kernels
  (:func:`hymba.ops.fused_mamba_step`), which do not read int4.

The quantized model is for inference: its quantized weights take no gradients, and it cannot be
saved in the released format.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError

QUANT_MODES = ("int8", "int4")
INT4_GROUP_SIZES = (128, 64, 32)
# torchao's CPU int4 packing takes output widths that are multiples of this (its CUDA format pads)
CPU_INT4_ROWS = 16
# int8 under "int4" too (see the module docstring)
SSM_PROJECTIONS = ("ssm.x_proj", "ssm.dt_proj")


def check_mode(mode: object) -> str:
    """``mode`` if it names a quantization (``"int8"``, ``"int4"``), else a ConfigError."""
    if not isinstance(mode, str) or mode not in QUANT_MODES:
        raise ConfigError(f"quantize={mode!r}: choose one of {', '.join(map(repr, QUANT_MODES))} (or None)")
    return mode


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linear layers :func:`quantize` quantizes: those inside the decoder layers, with their names."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.startswith("model.layers.")]


def _torchao(mode: str):
    try:
        import torchao.quantization as tq
    except ImportError as exc:
        raise ConfigError(f"quantize={mode!r} needs torchao: pip install 'hymba[quant]' ({exc})") from None
    return tq


def _int8_config(tq):
    return tq.Int8WeightOnlyConfig(granularity=tq.PerRow(), set_inductor_config=False)


def _int4_config(tq, device: torch.device, group_size: int):
    if device.type == "cuda":
        return tq.Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d",
                                       set_inductor_config=False)
    if device.type == "cpu":
        from torchao.prototype.quantization.int4.inference_workflow import (
            PrototypeInt4WeightOnlyConfig,
        )

        return PrototypeInt4WeightOnlyConfig(group_size=group_size, set_inductor_config=False)
    raise ConfigError(f"quantize='int4' runs on CUDA or the CPU, not on {device.type}")


@torch.no_grad()
def quantize(model: nn.Module, mode: str, group_size: int = 128) -> nn.Module:
    """Quantize ``model``'s decoder linear weights in place (``mode``: ``"int8"`` or ``"int4"``;
    ``group_size``: int4's group of input features, one of 128, 64, 32) and return it. Call it
    after the model is on its device and in its dtype: moving or casting a quantized model is not
    supported. Layers quantized: :func:`quantized_layers`; the format: this module's docstring."""
    mode = check_mode(mode)
    if getattr(model, "quantization", None) is not None:
        raise ConfigError(f"the model is already quantized ({model.quantization})")
    if group_size not in INT4_GROUP_SIZES:
        raise ConfigError(f"group_size={group_size!r}: choose one of {INT4_GROUP_SIZES}")
    if any(".lora_" in name for name, _ in model.named_modules()):
        raise ConfigError("the model carries LoRA adapters: merge them first (hymba merge-lora), then quantize")
    layers = quantized_layers(model)
    if not layers:
        raise ConfigError("the model has no decoder linear layers to quantize")
    tq = _torchao(mode)
    device = layers[0][1].weight.device
    for name, layer in layers:
        if layer.weight.device.type == "meta":
            raise ConfigError("quantize a model whose weights are loaded (not on the meta device)")
        width = layer.in_features
        sizes = [g for g in INT4_GROUP_SIZES if g <= group_size and width % g == 0]
        int4 = (mode == "int4" and bool(sizes) and not name.endswith(SSM_PROJECTIONS)
                and not (device.type == "cpu" and layer.out_features % CPU_INT4_ROWS))
        if not int4:
            tq.quantize_(layer, _int8_config(tq))
            continue
        if device.type == "cuda" and layer.weight.dtype != torch.bfloat16:
            layer.weight = nn.Parameter(layer.weight.to(torch.bfloat16), requires_grad=False)
        tq.quantize_(layer, _int4_config(tq, device, sizes[0]))
    model.quantization = mode
    return model


__all__ = ["QUANT_MODES", "check_mode", "quantize", "quantized_layers"]
