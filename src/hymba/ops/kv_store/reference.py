"""Storing one decode step's keys and values in the cache, in PyTorch (scatters)."""

from __future__ import annotations

from torch import Tensor

from ..rotary import apply_rotary


def write_slots(store: Tensor, index: Tensor, new: Tensor) -> None:
    """``store[b, :, index[b, t]] = new[b, :, t]`` in place; store (b, H, slots, d), new (b, H, L, d)."""
    idx = index[:, None, :, None].expand(-1, store.shape[1], -1, store.shape[3])
    store.scatter_(2, idx, new.to(store.dtype))


def store_kv_step_reference(
    k_store: Tensor, v_store: Tensor, k: Tensor, v: Tensor, pos: Tensor, first_pos: int,
    ring_pos: Tensor | None = None, rotary: tuple[Tensor, Tensor] | None = None,
) -> None:
    """Reference of :func:`hymba.ops.kv_store.store_kv_step`."""
    if rotary is not None:
        k = apply_rotary(k, *rotary)
    index = pos - first_pos
    if ring_pos is not None:
        index = index % ring_pos.shape[1]
        ring_pos.scatter_(1, index, pos)
    write_slots(k_store, index, k)
    write_slots(v_store, index, v)
