"""Pure functions on tensors (no module state), one folder per op: ``__init__.py`` chooses the
implementation that runs, ``reference.py`` is the readable PyTorch definition, ``triton.py`` the
fast kernel where there is one. Which fast paths may run is decided in :mod:`hymba.ops.switches`.
"""

from .attention import attention, attention_mask, sdpa_attention
from .conv import causal_conv1d, causal_conv1d_update
from .decode_attention import DecodeKeys, attention_with_prefix, decode_attention
from .derived import derived
from .kv_store import store_kv_step
from .linear import linear
from .norm import (
    add_rms_norm,
    linear_input_dtype,
    mean_of_rms_norms,
    rms_norm,
    rms_norm_parts,
    rms_norm_reference,
)
from .rotary import apply_rotary, apply_rotary_reference
from .scan import selective_scan, selective_scan_chunked, selective_scan_reference
from .ssm_step import (
    fused_mamba_step,
    fused_mamba_step_supported,
    selective_state_update,
    ssm_decode_step,
)
from .swiglu import silu_mul, swiglu

__all__ = [
    "attention",
    "attention_mask",
    "attention_with_prefix",
    "apply_rotary",
    "apply_rotary_reference",
    "sdpa_attention",
    "causal_conv1d",
    "causal_conv1d_update",
    "DecodeKeys",
    "decode_attention",
    "derived",
    "add_rms_norm",
    "linear_input_dtype",
    "mean_of_rms_norms",
    "rms_norm",
    "rms_norm_reference",
    "rms_norm_parts",
    "silu_mul",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_reference",
    "selective_state_update",
    "ssm_decode_step",
    "fused_mamba_step",
    "fused_mamba_step_supported",
    "store_kv_step",
    "linear",
    "swiglu",
]
