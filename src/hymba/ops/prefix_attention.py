"""Attention over a shared, always-visible prefix plus per-row keys, without concatenating them.

Decoding reads the meta tokens' K/V (one copy per model, batch 1) and a request's own cached K/V
(batch b). The two blocks are scored separately and merged with one softmax, so neither is copied
or concatenated at a decode step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def attention_with_prefix(
    q: Tensor, prefix_k: Tensor, prefix_v: Tensor, k: Tensor, v: Tensor, mask: Tensor
) -> Tensor:
    """softmax over [prefix keys (all visible), keys (where ``mask``)] of q kᵀ / sqrt(d), times V.

    ``q``: (b, Hq, Lq, d_qk); ``prefix_k``: (1 or b, Hkv, P, d_qk); ``prefix_v``: (1 or b, Hkv,
    P, d_v); ``k``: (b, Hkv, S, d_qk); ``v``: (b, Hkv, S, d_v); ``mask``: (b, 1, Lq, S) bool.
    Query head h uses K/V head h // (Hq / Hkv). Computes in float32 (float64 for float64 inputs); returns (b, Hq, Lq, d_v) in q's dtype.
    """
    b, hq, lq, d = q.shape
    hkv = k.shape[1]
    dtype = torch.promote_types(q.dtype, torch.float32)
    qg = q.reshape(b, hkv, hq // hkv, lq, d).to(dtype) * (1.0 / math.sqrt(d))
    scores = torch.matmul(qg, k.to(dtype)[:, :, None].transpose(-1, -2))  # (b, Hkv, g, Lq, S)
    scores = scores.masked_fill(~mask[:, :, None], float("-inf"))
    parts = [(scores, v)]
    if prefix_k.shape[2]:
        parts.insert(0, (torch.matmul(qg, prefix_k.to(dtype)[:, :, None].transpose(-1, -2)), prefix_v))
    top = torch.stack([s.amax(-1) for s, _ in parts]).amax(0)[..., None]
    num, den = 0.0, 0.0
    for s, values in parts:
        p = torch.exp(s - top)
        num = num + torch.matmul(p, values.to(dtype)[:, :, None])
        den = den + p.sum(-1, keepdim=True)
    return (num / den).reshape(b, hq, lq, -1).to(q.dtype)
