"""Decode attention: one new query per row over [always-visible prefix K/V] + [cached K/V].

Which cached keys a query sees is described by :class:`DecodeKeys` (positions, not a mask), so
the fused kernel (:mod:`hymba.ops.decode_attention.triton`) decides visibility on the fly and a
decode step builds no mask; the reference (:mod:`hymba.ops.decode_attention.reference`) builds
the boolean mask and calls :func:`attention_with_prefix`.
"""

from __future__ import annotations

from torch import Tensor

from ..switches import use_triton
from .reference import DecodeKeys, attention_with_prefix, decode_attention_reference


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
        from .triton import decode_attention_triton

        return decode_attention_triton(q, prefix_k, prefix_v, k, v, keys, rotary)
    return decode_attention_reference(q, prefix_k, prefix_v, k, v, keys, rotary)


__all__ = ["DecodeKeys", "attention_with_prefix", "decode_attention", "decode_attention_reference"]
