"""Decode attention in PyTorch: one new query per row over [always-visible prefix K/V] + [cached
K/V], the cached keys' visibility given by positions (:class:`DecodeKeys`).

:func:`attention_with_prefix` is attention over a shared, always-visible prefix plus per-row keys,
without concatenating them. Decoding reads the meta tokens' K/V (one copy per model, batch 1) and a request's own cached K/V
(batch b). The two blocks are scored separately and merged with one softmax, so neither is copied,
cast or concatenated at a decode step: the query heads of a K/V group are folded into the query
length, so each block is one batched matmul over the cache as it is stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..rotary import apply_rotary

_LOW_PRECISION = (torch.bfloat16, torch.float16)


@dataclass
class DecodeKeys:
    """Visibility of cached keys for the query at ``pos`` (b, 1): slot s holds position
    ``slot_pos[b, s]`` (a ring buffer; -1 = empty) or, when ``slot_pos`` is None, position
    ``first_pos + s`` (a global layer's linear store). A key is visible iff its position p satisfies
    ``0 <= p <= pos`` and, with a ``limit``, ``pos - p <= limit``. Invisible slots must hold finite
    values (the fused kernel reads them and gives them zero weight). A ring is filled in position
    order, position p (>= ``first_pos``) in slot ``(p - first_pos) % S``, as the cache writes it: so
    no slot at or past ``pos - first_pos + 1`` is occupied yet, and the fused kernel does not read
    those."""

    pos: Tensor
    slot_pos: Tensor | None
    first_pos: int
    limit: int | None = None

    def mask(self, num_slots: int) -> Tensor:
        """(b, 1, 1, num_slots) bool mask (the reference's form)."""
        if self.slot_pos is None:
            p = torch.arange(self.first_pos, self.first_pos + num_slots, device=self.pos.device)[None]
        else:
            p = self.slot_pos[:, :num_slots]
        visible = (p >= 0) & (p <= self.pos)
        if self.limit is not None:
            visible = visible & (self.pos - p <= self.limit)
        return visible[:, None, None]


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


def decode_attention_reference(
    q: Tensor, prefix_k: Tensor, prefix_v: Tensor, k: Tensor, v: Tensor, keys: DecodeKeys,
    rotary: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Reference of :func:`hymba.ops.decode_attention`: q rotated (if ``rotary``), the mask built
    from ``keys``, then :func:`attention_with_prefix`."""
    if rotary is not None:
        q = apply_rotary(q, *rotary)
    return attention_with_prefix(q, prefix_k, prefix_v, k, v, keys.mask(k.shape[2]))
