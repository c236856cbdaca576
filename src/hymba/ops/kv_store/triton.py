"""One decode step's K/V into the cache in Triton: one program per (row, K/V head), the key's
rotary embedding applied on the way."""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from .._triton import pdl_launch, wait_for_producers
from ..rotary.triton import rotary_tables, rotate_half_split


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, cos_ptr, sin_ptr, ks_ptr, vs_ptr, pos_ptr, ring_ptr, Hkv, slots, first_pos,
    sk_b, sk_h, sv_b, sv_h, sc_b, sks_b, sks_h, sks_n, svs_b, svs_h, svs_n, sp_b, sr_b,
    DQK: tl.constexpr, DV: tl.constexpr, DQK_P: tl.constexpr, DV_P: tl.constexpr, ROPE: tl.constexpr,
    RING: tl.constexpr, PDL: tl.constexpr,
):
    wait_for_producers(PDL)
    bh = tl.program_id(0)
    b = (bh // Hkv).to(tl.int64)
    h = (bh % Hkv).to(tl.int64)
    pos = tl.load(pos_ptr + b * sp_b)
    slot = (pos - first_pos).to(tl.int64)
    if RING:  # positions are never below first_pos, so % (truncating here) equals torch's
        slot = slot % slots
        if h == 0:
            tl.store(ring_ptr + b * sr_b + slot, pos)
    dq = tl.arange(0, DQK_P)
    k_row = k_ptr + b * sk_b + h * sk_h
    k_mask = (dq < DQK)[None, :]
    k = tl.load(k_row + dq[None, :], mask=k_mask)  # a (1, DQK_P) tile
    if ROPE:
        k = rotate_half_split(k, k_row, dq, DQK, cos_ptr + b * sc_b, sin_ptr + b * sc_b, k_mask)
    tl.store(ks_ptr + b * sks_b + h * sks_h + slot * sks_n + dq[None, :], k.to(ks_ptr.dtype.element_ty), mask=k_mask)
    dv = tl.arange(0, DV_P)
    v = tl.load(v_ptr + b * sv_b + h * sv_h + dv, mask=dv < DV)
    tl.store(vs_ptr + b * svs_b + h * svs_h + slot * svs_n + dv, v.to(vs_ptr.dtype.element_ty), mask=dv < DV)


def store_kv_step_triton(
    k_store: Tensor, v_store: Tensor, k: Tensor, v: Tensor, pos: Tensor, first_pos: int,
    ring_pos: Tensor | None = None, rotary: tuple[Tensor, Tensor] | None = None,
) -> None:
    """Same as :func:`hymba.ops.kv_store.reference.store_kv_step_reference` (one token per row)."""
    b, hkv, _, dqk = k.shape
    dv = v.shape[-1]
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    if k_store.stride(-1) != 1 or v_store.stride(-1) != 1:
        raise ValueError("the K/V stores must have unit stride in their last dimension")
    ring = ring_pos if ring_pos is not None else pos  # a placeholder pointer when there is no ring
    cos, sin, sc_b = rotary_tables(rotary, b, 1, dqk) if rotary is not None else (k, k, 0)
    _store_kv_kernel[(b * hkv,)](
        k, v, cos, sin, k_store, v_store, pos, ring, hkv, k_store.shape[2], first_pos,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), sc_b,
        k_store.stride(0), k_store.stride(1), k_store.stride(2),
        v_store.stride(0), v_store.stride(1), v_store.stride(2), pos.stride(0), ring.stride(0),
        DQK=dqk, DV=dv, DQK_P=triton.next_power_of_2(dqk), DV_P=triton.next_power_of_2(dv),
        ROPE=rotary is not None, RING=ring_pos is not None, **pdl_launch(k.device), num_warps=1,
    )
