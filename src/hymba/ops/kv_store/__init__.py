"""Storing one decode step's keys and values in the cache: the reference
(:mod:`hymba.ops.kv_store.reference`) and a fused Triton kernel (:mod:`hymba.ops.kv_store.triton`).

A producer layer's new K/V for position ``pos`` go to slot ``pos - first_pos`` of a linear store
(global layers), or to slot ``(pos - first_pos) % size`` of a ring buffer (sliding-window layers),
whose ``ring_pos`` then records the position held by that slot.
"""

from __future__ import annotations

from torch import Tensor

from ..switches import use_triton
from .reference import store_kv_step_reference, write_slots


def store_kv_step(
    k_store: Tensor, v_store: Tensor, k: Tensor, v: Tensor, pos: Tensor, first_pos: int,
    ring_pos: Tensor | None = None, rotary: tuple[Tensor, Tensor] | None = None,
) -> None:
    """Write ``k`` (b, Hkv, 1, d_qk) and ``v`` (b, Hkv, 1, d_v) of positions ``pos`` (b, 1) into
    the stores (b, Hkv, slots, d), in place; with ``ring_pos`` (b, slots) the stores are rings;
    with ``rotary`` = (cos, sin) the keys get their rotary embedding first
    (:func:`hymba.ops.apply_rotary`). One Triton kernel on CUDA without autograd, else the
    reference's scatters."""
    if k.shape[2] == 1 and (rotary is None or k.shape[-1] % 2 == 0) and use_triton(k, v, k_store, v_store):
        from .triton import store_kv_step_triton

        return store_kv_step_triton(k_store, v_store, k, v, pos, first_pos, ring_pos, rotary)
    return store_kv_step_reference(k_store, v_store, k, v, pos, first_pos, ring_pos, rotary)


__all__ = ["store_kv_step", "store_kv_step_reference", "write_slots"]
