"""Pure functions on tensors (no module state). Each fast path has a readable reference beside it."""

from .attention import attention, attention_mask, sdpa_attention
from .conv import causal_conv1d, causal_conv1d_update
from .decode_attention import DecodeKeys, decode_attention
from .derived import derived
from .kv_store import store_kv_step
from .linear import linear, swiglu
from .norm import (
    add_rms_norm,
    linear_input_dtype,
    mean_of_rms_norms,
    rms_norm,
    rms_norm_parts,
    rms_norm_reference,
    silu_mul,
)
from .prefix_attention import attention_with_prefix
from .rotary import apply_rotary, apply_rotary_reference
from .scan import selective_scan, selective_scan_chunked, selective_scan_reference
from .ssm_step import MambaStepWeights, mamba_decode_step, selective_state_update, ssm_decode_step

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
    "MambaStepWeights",
    "mamba_decode_step",
    "store_kv_step",
    "linear",
    "swiglu",
]
