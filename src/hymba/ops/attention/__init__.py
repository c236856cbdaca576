"""Attention with Hymba's masks (causal, sliding window with always-visible meta tokens, padding)
for prefill and training: SDPA over a boolean mask (:mod:`hymba.ops.attention.reference`), and on
CUDA FlexAttention for long unpadded self-attention (:mod:`hymba.ops.attention.flex`), which
builds block masks from the positions instead and skips the blocks no query sees.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import switches
from .reference import attention_mask, attention_reference, sdpa_attention

# FlexAttention compiled for dynamic lengths had lowering bugs before torch 2.7; older versions
# take SDPA.
_FLEX_TORCH = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 7)

# FlexAttention's block masks cover blocks of 128 queries and keys: fewer queries than one block
# gain nothing from skipping blocks, and SDPA needs no compilation.
FLEX_MIN_QUERIES = 128


def _flex_enabled(q: Tensor) -> bool:
    if not _FLEX_TORCH or q.device.type != "cuda" or not switches.flex_attention_allowed():
        return False
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_pos: Tensor,
    k_pos: Tensor,
    window: int | None,
    num_meta: int,
    key_valid: Tensor | None = None,
    q_start: int | None = None,
    masks: dict | None = None,
) -> Tensor:
    """Dispatching attention: FlexAttention on CUDA for long unpadded self-attention, else SDPA.

    1-D ``q_pos``/``k_pos`` are consecutive positions (as the model builds them) with the queries
    the last keys, e.g. a prompt after the cached meta tokens. ``q_start`` is ``q_pos[0]`` as a
    Python int, if the caller knows it (else it is read from the device, which waits for the GPU).
    ``masks``: a dict that keeps a mask once built, by window, for later calls with the same
    positions and validity (the layers sharing one producer's K/V): the mask is then built once."""
    lq, lk = q.shape[2], k.shape[2]
    if (key_valid is None and lk >= lq >= FLEX_MIN_QUERIES and q_pos.dim() == 1 and k_pos.dim() == 1
            and _flex_enabled(q)):
        from .flex import flex_attention_swa

        start = int(q_pos[0]) if q_start is None else q_start
        return flex_attention_swa(q, k, v, window, num_meta, offset=start - (lk - lq))
    return attention_reference(q, k, v, q_pos, k_pos, window, num_meta, key_valid, masks)


__all__ = ["attention", "attention_mask", "attention_reference", "sdpa_attention"]
