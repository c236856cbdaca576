"""Decode attention in Triton (flash-decoding): K/V read once, in place, in their stored dtype.

One program per (row, K/V head, split of the cached keys) handles all query heads of its K/V
group at once (padded to 16 rows for the tensor cores), walks its keys in blocks with an online
softmax in float32, and decides each key's visibility from positions (:class:`DecodeKeys`). The
first split also covers the always-visible prefix (the meta tokens). A second kernel merges the
splits. Splits are chosen so that small batches still fill the GPU. The query's rotary embedding
can be applied on the way in (one kernel fewer per layer).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._triton import pdl_launch, wait_for_producers
from ..rotary.triton import rotary_tables, rotate_half_split
from ..switches import num_sms
from .reference import DecodeKeys

# Keys per block, warps, pipeline stages and how many waves of programs to aim for when
# splitting the keys (``benchmarks/decode_attention_gpu.py`` times other choices). A ring store
# with more (row, K/V head) programs than two per SM takes smaller blocks and one more stage
# (CROWDED_RING), so that about five programs stay resident per SM instead of two: its programs are
# short (a window of keys), and with only two resident the last wave of programs runs part-empty.
BLOCK_N = 128
NUM_WARPS = 4
NUM_STAGES = 2
WAVES = 2
CROWDED_RING = dict(block_n=32, num_stages=3)


@triton.jit
def _attend_block(q, k_ptrs, v_ptrs, inside, valid, dq_ok, dv_ok, m, l, acc, scale, PREC: tl.constexpr):
    """One block of keys: online-softmax update of (m, l, acc) for the rows of q. K and V are
    loaded for every slot ``inside`` the store, visible or not, so that their loads need not wait
    for the slot positions; invisible keys get zero weight (the caches are allocated zeroed and
    hold only values the model wrote, so an invisible V is finite)."""
    k = tl.load(k_ptrs, mask=inside[:, None] & dq_ok[None, :], other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
    s = tl.where(valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that have seen nothing yet
    p = tl.exp(s - m_safe[:, None])
    alpha = tl.exp(m - m_safe)
    v = tl.load(v_ptrs, mask=inside[:, None] & dv_ok[None, :], other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return m_new, l * alpha + tl.sum(p, axis=1), acc


@triton.jit
def _decode_kernel(
    q_ptr, cos_ptr, sin_ptr, pk_ptr, pv_ptr, k_ptr, v_ptr, pos_ptr, slot_pos_ptr,
    out_ptr, part_acc_ptr, part_ml_ptr,
    Hkv, G, P, S, keys_per_split, first_pos, limit, scale,
    sq_b, sq_h, sc_b, spk_b, spk_h, spk_n, spv_b, spv_h, spv_n,
    sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, ssp_b, so_b, so_h,
    DQK: tl.constexpr, DV: tl.constexpr, GP: tl.constexpr, DQK_P: tl.constexpr, DV_P: tl.constexpr,
    ROPE: tl.constexpr, RING: tl.constexpr, HAS_LIMIT: tl.constexpr, SPLIT: tl.constexpr, BN: tl.constexpr,
    PREC: tl.constexpr, PDL: tl.constexpr,
):
    wait_for_producers(PDL)
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = (bh // Hkv).to(tl.int64)
    h = (bh % Hkv).to(tl.int64)
    rows = tl.arange(0, GP)
    dq = tl.arange(0, DQK_P)
    dv = tl.arange(0, DV_P)
    row_ok = rows < G
    dq_ok = dq < DQK
    dv_ok = dv < DV
    q_rows = q_ptr + b * sq_b + (h * G + rows)[:, None] * sq_h
    q_mask = row_ok[:, None] & dq_ok[None, :]
    q = tl.load(q_rows + dq[None, :], mask=q_mask, other=0.0)
    if ROPE:  # the query's rotary embedding, as ops.apply_rotary computes it
        q = rotate_half_split(q, q_rows, dq, DQK, cos_ptr + b * sc_b, sin_ptr + b * sc_b, q_mask)
    pos = tl.load(pos_ptr + b)
    m = tl.full((GP,), float("-inf"), tl.float32)
    l = tl.zeros((GP,), tl.float32)
    acc = tl.zeros((GP, DV_P), tl.float32)
    offs = tl.arange(0, BN)
    if split == 0:  # the prefix: every key visible
        for start in range(0, P, BN):
            n = start + offs
            m, l, acc = _attend_block(
                q, pk_ptr + b * spk_b + h * spk_h + n[:, None] * spk_n + dq[None, :],
                pv_ptr + b * spv_b + h * spv_h + n[:, None] * spv_n + dv[None, :],
                n < P, n < P, dq_ok, dv_ok, m, l, acc, scale, PREC)
    lo = split * keys_per_split
    # a linear store holds nothing after the query's own position, and a ring is filled in
    # position order (DecodeKeys): either way no slot past pos - first_pos is occupied
    hi = tl.minimum(tl.minimum(lo + keys_per_split, S), pos - first_pos + 1)
    for start in range(lo, hi, BN):
        n = start + offs
        inside = n < hi
        if RING:
            kp = tl.load(slot_pos_ptr + b * ssp_b + n, mask=inside, other=-1)
        else:
            kp = first_pos + n
        valid = inside & (kp >= 0) & (kp <= pos)
        if HAS_LIMIT:
            valid = valid & (pos - kp <= limit)
        m, l, acc = _attend_block(
            q, k_ptr + b * sk_b + h * sk_h + n[:, None] * sk_n + dq[None, :],
            v_ptr + b * sv_b + h * sv_h + n[:, None] * sv_n + dv[None, :], inside, valid, dq_ok, dv_ok,
            m, l, acc, scale, PREC)
    if SPLIT:
        base = (bh * tl.num_programs(1) + split) * GP
        tl.store(part_acc_ptr + (base + rows)[:, None] * DV_P + dv[None, :], acc)
        tl.store(part_ml_ptr + (base + rows) * 2, m)
        tl.store(part_ml_ptr + (base + rows) * 2 + 1, l)
    else:
        out = acc / l[:, None]
        tl.store(out_ptr + b * so_b + (h * G + rows)[:, None] * so_h + dv[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dv_ok[None, :])


@triton.jit
def _merge_kernel(part_acc_ptr, part_ml_ptr, out_ptr, Hkv, G, num_splits, so_b, so_h,
                  DV: tl.constexpr, GP: tl.constexpr, DV_P: tl.constexpr, SPLITS_P: tl.constexpr, PDL: tl.constexpr):
    """One query head: combine its per-split (max, sum, weighted values) in one pass."""
    wait_for_producers(PDL)
    bh = tl.program_id(0)
    row = tl.program_id(1)
    b = (bh // Hkv).to(tl.int64)
    h = (bh % Hkv).to(tl.int64)
    sp = tl.arange(0, SPLITS_P)
    dv = tl.arange(0, DV_P)
    used = sp < num_splits
    base = (bh * num_splits + sp) * GP + row
    m = tl.load(part_ml_ptr + base * 2, mask=used, other=float("-inf"))
    l = tl.load(part_ml_ptr + base * 2 + 1, mask=used, other=0.0)
    acc = tl.load(part_acc_ptr + base[:, None] * DV_P + dv[None, :], mask=used[:, None], other=0.0)
    top = tl.max(m, axis=0)
    w = tl.where(m == float("-inf"), 0.0, tl.exp(m - top))
    out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
    tl.store(out_ptr + b * so_b + (h * G + row) * so_h + dv, out.to(out_ptr.dtype.element_ty), mask=dv < DV)


def decode_attention_triton(
    q: Tensor, prefix_k: Tensor, prefix_v: Tensor, k: Tensor, v: Tensor, keys: DecodeKeys,
    rotary: tuple[Tensor, Tensor] | None = None,
    block_n: int | None = None, num_warps: int = NUM_WARPS, num_stages: int | None = None,
    waves: int = WAVES,
) -> Tensor:
    """Same as :func:`hymba.ops.decode_attention.decode_attention` (one query per row); the
    keyword arguments after ``rotary`` are the kernel's tuning knobs (None: BLOCK_N and
    NUM_STAGES, or CROWDED_RING's)."""
    b, hq, lq, dqk = q.shape
    hkv, S, dv = k.shape[1], k.shape[2], v.shape[3]
    crowded = keys.slot_pos is not None and b * hkv > 2 * num_sms(q.device)
    block_n = block_n or (CROWDED_RING["block_n"] if crowded else BLOCK_N)
    num_stages = num_stages or (CROWDED_RING["num_stages"] if crowded else NUM_STAGES)
    P = prefix_k.shape[2]
    if lq != 1:
        raise ValueError(f"decode attention takes one query per row, got {lq}")
    for t in (q, prefix_k, prefix_v, k, v):
        if t.stride(-1) != 1:
            raise ValueError("q, K and V need a contiguous last dimension")
    cos, sin, sc_b = rotary_tables(rotary, b, 1, dqk) if rotary is not None else (q, q, 0)
    g = hq // hkv
    gp, dqk_p, dv_p = max(16, triton.next_power_of_2(g)), max(16, triton.next_power_of_2(dqk)), max(16, triton.next_power_of_2(dv))
    # enough programs for about two waves of the GPU, but no split shorter than one block
    blocks = max(1, triton.cdiv(S, block_n))
    splits = max(1, min(blocks, triton.cdiv(waves * num_sms(q.device), b * hkv)))
    keys_per_split = triton.cdiv(blocks, splits) * block_n
    splits = max(1, triton.cdiv(S, keys_per_split))
    out = torch.empty(b, hq, 1, dv, dtype=q.dtype, device=q.device)
    if splits > 1:
        part_acc = torch.empty(b * hkv * splits * gp, dv_p, dtype=torch.float32, device=q.device)
        part_ml = torch.empty(b * hkv * splits * gp, 2, dtype=torch.float32, device=q.device)
    else:
        part_acc = part_ml = out
    pos = keys.pos.reshape(b).contiguous()
    slot_pos = keys.slot_pos if keys.slot_pos is not None else pos
    pk_b = prefix_k.stride(0) if prefix_k.shape[0] > 1 else 0
    pv_b = prefix_v.stride(0) if prefix_v.shape[0] > 1 else 0
    pdl = pdl_launch(q.device)
    _decode_kernel[(b * hkv, splits)](
        q, cos, sin, prefix_k, prefix_v, k, v, pos, slot_pos, out, part_acc, part_ml,
        hkv, g, P, S, keys_per_split, keys.first_pos, keys.limit if keys.limit is not None else 0,
        1.0 / math.sqrt(dqk),
        q.stride(0), q.stride(1), sc_b, pk_b, prefix_k.stride(1), prefix_k.stride(2),
        pv_b, prefix_v.stride(1), prefix_v.stride(2),
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        slot_pos.stride(0), out.stride(0), out.stride(1),
        DQK=dqk, DV=dv, GP=gp, DQK_P=dqk_p, DV_P=dv_p, ROPE=rotary is not None, RING=keys.slot_pos is not None,
        HAS_LIMIT=keys.limit is not None, SPLIT=splits > 1, BN=block_n,
        PREC="ieee" if q.dtype == torch.float32 else None, **pdl, num_warps=num_warps,
        num_stages=num_stages,
    )
    if splits > 1:
        _merge_kernel[(b * hkv, g)](part_acc, part_ml, out, hkv, g, splits, out.stride(0), out.stride(1),
                                    DV=dv, GP=gp, DV_P=dv_p, SPLITS_P=triton.next_power_of_2(splits),
                                    **pdl, num_warps=4)
    return out
