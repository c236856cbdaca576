"""FlexAttention (CUDA) for Hymba's sliding-window + meta-token mask in prefill and training.

Same semantics as :func:`hymba.ops.attention.attention_mask` for self-attention over one unpadded
sequence whose positions are ``offset + index``. Block masks are built once per shape and cached.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

_compiled_flex = None


def _flex():
    global _compiled_flex
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


@lru_cache(maxsize=64)
def _block_mask(length: int, window: int | None, num_meta: int, offset: int, device: str):
    def mask_mod(b, h, q_idx, kv_idx):
        causal = kv_idx <= q_idx
        if window is None:
            return causal
        q = q_idx + offset
        k = kv_idx + offset
        return causal & ((q - k <= window) | (k < num_meta))

    return create_block_mask(mask_mod, None, None, length, length, device=device)


def flex_attention_swa(
    q: Tensor, k: Tensor, v: Tensor, window: int | None, num_meta: int, offset: int = 0
) -> Tensor:
    """``q``: (b, Hq, L, d_qk); ``k``: (b, Hkv, L, d_qk); ``v``: (b, Hkv, L, d_v)."""
    mask = _block_mask(q.shape[2], window, num_meta, offset, str(q.device))
    return _flex()(q, k, v, block_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
