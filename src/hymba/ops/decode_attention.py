"""Decode attention: one new query per row over [always-visible prefix K/V] + [cached K/V].

Which cached keys a query sees is described by :class:`DecodeKeys` (positions, not a mask), so
the fused kernel decides visibility on the fly and a decode step builds no mask; the reference
builds the boolean mask and calls :func:`hymba.ops.prefix_attention.attention_with_prefix`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .prefix_attention import attention_with_prefix
from .rotary import apply_rotary
from .triton_gate import use_triton


@dataclass
class DecodeKeys:
    """Visibility of cached keys for the query at ``pos`` (b, 1): slot s holds position
    ``slot_pos[b, s]`` (a ring buffer; -1 = empty) or, when ``slot_pos`` is None, position
    ``first_pos + s`` (a global layer's linear store). A key is visible iff its position p satisfies
    ``0 <= p <= pos`` and, with a ``limit``, ``pos - p <= limit``. Invisible slots must hold finite
    values (the fused kernel reads them and gives them zero weight)."""

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


def decode_attention(
    q: Tensor, prefix_k: Tensor, prefix_v: Tensor, k: Tensor, v: Tensor, keys: DecodeKeys,
    rotary: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """softmax over [prefix keys (all visible), cached keys (visible per ``keys``)] of
    q kᵀ / sqrt(d), times V. ``q``: (b, Hq, 1, d_qk); ``prefix_k/v``: (1 or b, Hkv, P, d);
    ``k/v``: (b, Hkv, S, d) as stored; ``rotary``: (cos, sin) of each row's position, (1 or b,
    1, 1, d_qk), to rotate q by first (:func:`hymba.ops.apply_rotary`). One Triton kernel (plus
    a merge of key splits) on CUDA without autograd; otherwise the reference. Returns
    (b, Hq, 1, d_v) in q's dtype."""
    if q.shape[2] == 1 and (rotary is None or q.shape[-1] % 2 == 0) and use_triton(q, prefix_k, prefix_v, k, v):
        from .decode_attention_triton import decode_attention_triton

        return decode_attention_triton(q, prefix_k, prefix_v, k, v, keys, rotary)
    if rotary is not None:
        q = apply_rotary(q, *rotary)
    return attention_with_prefix(q, prefix_k, prefix_v, k, v, keys.mask(k.shape[2]))
