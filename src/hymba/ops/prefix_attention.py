"""Attention over a shared, always-visible prefix plus per-row keys, without concatenating them.

Decoding reads the meta tokens' K/V (one copy per model, batch 1) and a request's own cached K/V
(batch b). The two blocks are scored separately and merged with one softmax, so neither is copied,
cast or concatenated at a decode step: the query heads of a K/V group are folded into the query
length, so each block is one batched matmul over the cache as it is stored.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def attention_with_prefix(
    q: Tensor, prefix_k: Tensor, prefix_v: Tensor, k: Tensor, v: Tensor, mask: Tensor
) -> Tensor:
    """softmax over [prefix keys (all visible), keys (where ``mask``)] of q kᵀ / sqrt(d), times V.

    ``q``: (b, Hq, Lq, d_qk); ``prefix_k``: (1 or b, Hkv, P, d_qk); ``prefix_v``: (1 or b, Hkv,
    P, d_v); ``k``: (b, Hkv, S, d_qk); ``v``: (b, Hkv, S, d_v); ``mask``: (b, 1, Lq, S) bool.
    Query head h uses K/V head h // (Hq / Hkv). With bf16/fp16 K/V the two matmuls run in that
    dtype (float32 accumulation) and the softmax statistics in float32; otherwise everything is
    computed in float32 (float64 for float64 inputs). Returns (b, Hq, Lq, d_v) in q's dtype.
    """
    b, hq, lq, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    group = hq // hkv
    stat = torch.promote_types(q.dtype, torch.float32)
    mm = k.dtype if k.dtype in _LOW_PRECISION else stat
    qg = (q.reshape(b, hkv, group * lq, d).to(stat) * (1.0 / math.sqrt(d))).to(mm)
    scores = torch.matmul(qg, k.to(mm).transpose(-1, -2)).to(stat)  # (b, Hkv, g·Lq, S)
    scores = scores.view(b, hkv, group, lq, s).masked_fill(~mask[:, :, None], float("-inf"))
    parts = [(scores.view(b, hkv, group * lq, s), v)]
    if prefix_k.shape[2]:
        parts.insert(0, (torch.matmul(qg, prefix_k.to(mm).transpose(-1, -2)).to(stat), prefix_v))
    top = torch.stack([x.amax(-1) for x, _ in parts]).amax(0)[..., None]
    num, den = 0.0, 0.0
    for x, values in parts:
        p = torch.exp(x - top)
        num = num + torch.matmul(p.to(mm), values.to(mm)).to(stat)
        den = den + p.sum(-1, keepdim=True)
    return (num / den).reshape(b, hq, lq, -1).to(q.dtype)
