"""Attention with Hymba's masks in PyTorch: the boolean mask and SDPA over it.

A query at position q sees key k iff ``k <= q`` and, in a sliding-window layer,
``q - k <= window`` or ``k < num_meta`` (itself, ``window`` earlier positions, every meta token).
Positions count the meta tokens: meta tokens are 0..M-1 and the first real token is M. Keys marked
invalid (padding) are never seen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def attention_mask(
    q_pos: Tensor,
    k_pos: Tensor,
    window: int | None,
    num_meta: int,
    key_valid: Tensor | None = None,
) -> Tensor:
    """Boolean mask (batch or 1, 1, Lq, Lk); True = may attend.

    ``q_pos``: (b, Lq) or (Lq,), ``k_pos``: (b, Lk) or (Lk,) positions; ``key_valid``: (b, Lk).
    A query that can see no key (a padding query) is allowed to see key 0 so that softmax stays
    finite; its output is never used.
    """
    q = q_pos.reshape(-1, q_pos.shape[-1])[:, :, None]
    k = k_pos.reshape(-1, k_pos.shape[-1])[:, None, :]
    allowed = k <= q
    if window is not None:
        allowed = allowed & ((q - k <= window) | (k < num_meta))
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, :]
        # no `if empty.any()`: reading it would wait for the device at every layer
        empty = ~allowed.any(-1, keepdim=True)
        first = torch.arange(allowed.shape[-1], device=allowed.device) == 0  # (no host-to-device copy)
        allowed = allowed | (empty & first)
    return allowed[:, None]


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """softmax(q kᵀ / sqrt(d_qk) + mask) v with grouped K/V heads; ``mask=None`` means causal
    with queries and keys aligned.

    ``q``: (b, Hq, Lq, d_qk); ``k``: (b, Hkv, Lk, d_qk); ``v``: (b, Hkv, Lk, d_v) (d_v may differ
    from d_qk); query head h uses K/V head h // (Hq / Hkv).
    """
    gqa = q.shape[1] != k.shape[1]
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if gqa and q.is_cuda:
        # with a mask, grouped K/V heads (enable_gqa) leave SDPA only its math backend, which
        # materialises every float32 score; K/V repeated per query head keep the memory-efficient one
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        gqa = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def attention_reference(
    q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor, window: int | None, num_meta: int,
    key_valid: Tensor | None = None, masks: dict | None = None,
) -> Tensor:
    """Reference of :func:`hymba.ops.attention`: SDPA over the mask (none for plain causal
    attention of aligned queries and keys); ``masks`` keeps built masks by window (see there)."""
    aligned = q_pos is k_pos and q_pos.dim() == 1 and key_valid is None
    if aligned and (window is None or q.shape[2] - 1 <= window):
        return sdpa_attention(q, k, v, None)  # plain causal: no mask to build
    mask = None if masks is None else masks.get(window)
    if mask is None:
        mask = attention_mask(q_pos, k_pos, window, num_meta, key_valid)
        if masks is not None:
            masks[window] = mask
    return sdpa_attention(q, k, v, mask)
