"""FlexAttention (CUDA) for Hymba's sliding-window + meta-token mask in prefill and training.

Same semantics as :func:`hymba.ops.attention.attention_mask` for self-attention over one unpadded
sequence whose positions are ``offset + index``.

The compiled kernel is specialised to its input shapes, so every new sequence length would compile
again (seconds each), and past dynamo's recompile limit FlexAttention silently falls back to an
unfused implementation that materialises the whole score matrix. To keep the number of shapes
small, sequences are padded at the end to a bucket length (:func:`bucket_length`); the padded
queries see no key, so their blocks are skipped and cost nothing but the copy. Block masks are
built once per (length, bucket, window, meta tokens, offset) and cached.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

# Distinct shapes one process may compile (dynamo's default is 8; buckets keep the real count low).
RECOMPILE_LIMIT = 64
# the setting's name since torch 2.7; ``cache_size_limit`` before
_LIMIT_SETTING = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"

_compiled_flex = None


def _flex():
    global _compiled_flex
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def bucket_length(length: int) -> int:
    """``length`` rounded up to a multiple of 128 and of 1/8 of the next power of two: at most 25%
    padding, and four buckets per doubling of the length above 1024."""
    step = max(128, (1 << (length - 1).bit_length()) // 8)
    return -(-length // step) * step


@lru_cache(maxsize=64)
def _block_mask(length: int, padded: int, window: int | None, num_meta: int, offset: int, device: str):
    # The real length is a captured tensor, not a Python constant, so that the compiled kernel does
    # not guard on it: one compilation serves every length of a bucket.
    real = torch.tensor(length, device=device)

    def mask_mod(b, h, q_idx, kv_idx):
        allowed = (kv_idx <= q_idx) & (q_idx < real)
        if window is None:
            return allowed
        q = q_idx + offset
        k = kv_idx + offset
        return allowed & ((q - k <= window) | (k < num_meta))

    return create_block_mask(mask_mod, None, None, padded, padded, device=device)


def flex_attention_swa(
    q: Tensor, k: Tensor, v: Tensor, window: int | None, num_meta: int, offset: int = 0
) -> Tensor:
    """``q``: (b, Hq, L, d_qk); ``k``: (b, Hkv, L, d_qk); ``v``: (b, Hkv, L, d_v)."""
    length = q.shape[2]
    padded = bucket_length(length)
    # contiguous either way: the compiled kernel is specialised to strides too
    q, k, v = (F.pad(t, (0, 0, 0, padded - length)) if padded != length else t.contiguous() for t in (q, k, v))
    mask = _block_mask(length, padded, window, num_meta, offset, str(q.device))
    with torch._dynamo.config.patch(**{_LIMIT_SETTING: RECOMPILE_LIMIT}):
        out = _flex()(q, k, v, block_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
    return out[:, :, :length]
