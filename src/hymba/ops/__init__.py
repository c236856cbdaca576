"""Pure functions on tensors (no module state). Each fast path has a readable reference beside it."""

from .attention import attention, attention_mask, sdpa_attention
from .conv import causal_conv1d, causal_conv1d_update
from .scan import selective_scan, selective_scan_chunked, selective_scan_reference

__all__ = [
    "attention",
    "attention_mask",
    "sdpa_attention",
    "causal_conv1d",
    "causal_conv1d_update",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_reference",
]
