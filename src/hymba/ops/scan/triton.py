"""Selective scan in Triton (CUDA): forward and backward, one time step after another.

Each program owns ``BLOCK_D`` channels of one sequence, one channel per lane, and keeps that
channel's whole float32 state (``d_state`` values) in the lane's registers, so a step is a few
fused multiply-adds per state element with no data exchanged between lanes (except the
backward's sums of dB and dC over channels). A step's inputs are loaded a few steps
ahead, so the loads' latency hides behind the arithmetic of the steps before.

At small batch the channels alone give too few programs, so the sequence is also cut into time
segments run in parallel and stitched, since both recurrences are linear:

- forward ``s_t = a_t s_{t-1} + x_t`` (a_t = exp(Δ_t A), x_t = Δ_t B_t u_t): pass 1 runs each
  segment from a zero state and keeps its end state and ΣΔ; pass 2 starts every segment from the
  state the earlier segments give (s <- exp(A ΣΔ_j) s + end_j) and writes y.
- backward, the adjoint ``g_t = C_t dy_t + a_{t+1} g_{t+1}``: pass 1 runs each segment from a
  zero carry and keeps the carry at its start and ΣΔ; pass 2 starts every segment from the carry
  the later segments give and forms every gradient. It recomputes each chunk's states from the
  state the forward saved at the chunk's start, walking forward once (keeping s_{t-1} of each
  step in a small per-program scratch buffer that stays in cache) and then backward.

Δ's softplus and bias, the D skip and the SiLU gate are fused, so each input is read once per
pass and each output is written once. Same signature and semantics as
:func:`hymba.ops.scan.reference.selective_scan_reference`; float64 inputs go to the chunked
PyTorch scan (the kernels compute in float32).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra.cuda import libdevice

from .._triton import softplus, split_steps
from ..switches import interpreting, needs_grad, num_sms
from .chunked import selective_scan_chunked

# Channels per program (one per lane) and warps (BWD_* for the backward, unless the caller sets
# ``block_d`` / ``num_warps``); a step's inputs are loaded FWD_PREFETCH / BWD_PREFETCH steps
# ahead (the backward has more live values and fewer registers to spare). CHUNK: the forward
# saves the state every CHUNK steps for the backward, which recomputes the states of one chunk
# at a time: a short chunk's recomputed states stay in the per-program scratch in L1, a long one
# saves fewer states; a forward that saves nothing runs FWD_UNROLL steps per unrolled block. The
# forward adds time segments until about TARGET_PROGRAMS programs run, none shorter than
# MIN_SEGMENT steps; the backward picks its own by :func:`backward_segments` (or, if
# BWD_TARGET_PROGRAMS is set, as the forward does with that target). Two steps ahead the forward
# needs 128 registers a thread, so an SM holds 16 of its single-warp programs: TARGET_PROGRAMS
# fills a GPU of about 128 SMs at batch 1 (``benchmarks/scan_gpu.py --launch-sweep`` times other
# launches).
BLOCK_D = 32
BWD_BLOCK_D = 16
WARPS = 1
BWD_WARPS = 1
FWD_PREFETCH = 2
# steps prefetched by a forward that saves states for a backward: saving takes registers, and a
# second step ahead (167 registers a thread against 129, sm_90 builds) costs resident programs
FWD_SAVE_PREFETCH = 1
BWD_PREFETCH = 1
CHUNK = 4
FWD_UNROLL = 8
TARGET_PROGRAMS = 2048
BWD_TARGET_PROGRAMS: int | None = None
MIN_SEGMENT = 256
# The backward's per-step sums of dB and dC over a warp's 16 channels as a transposing reduction
# of warp shuffles (inline PTX: on a GPU, at 16 channels on one warp, the layout it is written
# for, and 2-16 states; at 32 it spills); else ``tl.sum``. At Hymba's shape (an sm_90 build) it
# takes pass 2 from 268 to 84 shuffles and from 2,680 to 2,384 instructions; the pass waits on
# latency more than it issues instructions, so fewer shuffles on each step's chain help.
BWD_SCATTER = True
# Registers a thread of the backward's pass 2 may use (None: the compiler's choice, 254 at
# Hymba's shape, which holds an SM to 8 warps; 168 lets 12 run for 24 bytes of spills; on a GPU
# only, as a compile option, so the results do not change). The extra resident programs pay only
# where the program count fills whole waves (:func:`backward_segments` picks such counts); a
# tighter cap spills more than they gain.
BWD_MAXNREG = 168

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)

# The channel count ``d`` (the row stride of every (state, channel) tile) is not specialized on
# its divisibility: a provably aligned row would let Triton vectorize those tiles' loads along the
# channels and lay the whole state out with several channels per lane and the states of a
# channel spread over lanes, which turns every step's sum over the state into shuffles. The
# scratch's row stride is passed the same way.


@triton.jit
def _load_step(pu, pdt, pz, pdy, pbc, t, end, sl_u, sl_dt, sl_z, sl_dy, sl_bc, n, dmask, nmask,
               HAS_Z: tl.constexpr, HAS_DY: tl.constexpr):
    """One step's inputs (u, raw Δ, z, dy, B, C), zero at t outside [0, end)."""
    ok = (t >= 0) & (t < end)
    m = dmask & ok
    u = tl.load(pu + t * sl_u, mask=m, other=0.0)
    dt = tl.load(pdt + t * sl_dt, mask=m, other=0.0)
    z = u
    if HAS_Z:
        z = tl.load(pz + t * sl_z, mask=m, other=0.0)
    dy = u
    if HAS_DY:
        dy = tl.load(pdy + t * sl_dy, mask=m, other=0.0)
    Bt = tl.load(pbc + t * sl_bc, mask=nmask & ok, other=0.0)
    Ct = tl.load(pbc + n + t * sl_bc, mask=nmask & ok, other=0.0)
    return u, dt, z, dy, Bt, Ct


@triton.jit
def _delta(raw, bias, ok, SOFTPLUS: tl.constexpr, FAST: tl.constexpr):
    """Δ in float32 (zero where ``ok`` is false: such a step leaves the state as it is), and
    the softplus's input."""
    x = raw.to(tl.float32) + bias
    dt = x
    if SOFTPLUS:
        if FAST:
            dt = _fast_softplus(x)
        else:
            dt = softplus(x)
    return tl.where(ok, dt, 0.0), x


@triton.jit
def _fast_softplus(x):
    """:func:`softplus` with the hardware's approximate log2 (≈ 2^-22 absolute error), a
    fraction of the instructions of the exact logarithm."""
    e = tl.exp2(-tl.abs(x) * LOG2E)
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + libdevice.fast_logf(1.0 + e))


@triton.jit
def _gated(y, z, FAST: tl.constexpr):
    """y · SiLU(z), the division approximate (2 ulp) with FAST."""
    if FAST:
        return y * libdevice.fast_dividef(z, 1.0 + tl.exp2(-z * LOG2E))
    return y * z * tl.sigmoid(z)


@triton.jit
def _channel_major_load(ptr, offs_d, offs_n, s_d, s_n, nd_mask):
    """A (channel, state) matrix with strides s_d, s_n as a float32 (state, channel) tile.

    Loaded as a (channel, state) tile and transposed: with both strides unknown to the compiler
    (not specialized), this keeps each channel's states in one lane, the layout of the state."""
    tile = tl.load(ptr + offs_d[:, None] * s_d + offs_n[None, :] * s_n, mask=tl.trans(nd_mask), other=0.0)
    return tl.trans(tile.to(tl.float32))


@triton.jit
def _load_fwd_step(pu, pdt, pz, pbc, t, last, sl_u, sl_dt, sl_z, sl_bc, n, dmask, nmask,
                   HAS_Z: tl.constexpr):
    """One step's inputs for the forward (u, raw Δ, z, B, C), read at step min(t, last): a step
    past the end gets a real step's (finite) values and is masked by its caller."""
    t = tl.minimum(t, last)
    u = tl.load(pu + t * sl_u, mask=dmask)
    dt = tl.load(pdt + t * sl_dt, mask=dmask)
    z = u
    if HAS_Z:
        z = tl.load(pz + t * sl_z, mask=dmask)
    Bt = tl.load(pbc + t * sl_bc, mask=nmask)
    Ct = tl.load(pbc + n + t * sl_bc, mask=nmask)
    return u, dt, z, Bt, Ct


@triton.jit(do_not_specialize=["d", "sA_d", "sA_n", "sh0_d", "sh0_n", "shT_d", "shT_n"])
def _scan_fwd_kernel(
    u_ptr, dt_ptr, z_ptr, bc_ptr, A_ptr, D_ptr, bias_ptr, h0_ptr, seg_h_ptr, seg_dt_ptr,
    y_ptr, hT_ptr, hc_ptr,
    L, d, seg_len, num_segs,
    su_b, su_l, su_d, sdt_b, sdt_l, sdt_d, sz_b, sz_l, sz_d, sbc_b, sbc_l,
    sA_d, sA_n, sD, sbias, sh0_b, sh0_d, sh0_n, shT_d, shT_n,
    n: tl.constexpr, HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr,
    SAVE: tl.constexpr, LOCAL: tl.constexpr, N: tl.constexpr, T: tl.constexpr, BD: tl.constexpr,
    P: tl.constexpr, EVEN_D: tl.constexpr, FAST: tl.constexpr,
):
    """One program: BD channels of one sequence over one time segment.

    The state is an (N, BD) tile: lanes hold channels, each lane its channel's whole state. With
    LOCAL the segment runs from a zero state and only its end state and ΣΔ are written (pass 1);
    otherwise it starts from the state the earlier segments give and writes y (pass 2). A, D,
    the Δ bias and the initial state are read in their own dtypes and strides; the final state is
    written (batch, channel, state).
    """
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    seg = tl.program_id(2)
    offs_n = tl.arange(0, N)
    if EVEN_D:  # every lane has a channel: no channel masks
        dmask = tl.full((BD,), 1, tl.int1)
    else:
        dmask = offs_d < d
    nmask = offs_n < n
    nd_mask = nmask[:, None] & dmask[None, :]
    nd = offs_n[:, None] * d + offs_d[None, :]  # internal states are stored (state, channel)
    A2 = _channel_major_load(A_ptr, offs_d, offs_n, sA_d, sA_n, nd_mask) * LOG2E
    Dv = tl.load(D_ptr + offs_d * sD, mask=dmask, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + offs_d * sbias, mask=dmask, other=0.0).to(tl.float32)
    pu = u_ptr + pid_b * su_b + offs_d * su_d
    pdt = dt_ptr + pid_b * sdt_b + offs_d * sdt_d
    pz = z_ptr + pid_b * sz_b + offs_d * sz_d
    pbc = bc_ptr + pid_b * sbc_b + offs_n
    py = y_ptr + pid_b * L * d + offs_d

    h = tl.zeros((N, BD), dtype=tl.float32)
    if not LOCAL:
        if HAS_H0:
            h = _channel_major_load(h0_ptr + pid_b * sh0_b, offs_d, offs_n, sh0_d, sh0_n, nd_mask)
        for j in range(seg):  # earlier segments: s <- exp(A ΣΔ_j) s + local end state_j
            sdt = tl.load(seg_dt_ptr + (pid_b * num_segs + j) * d + offs_d, mask=dmask, other=0.0)
            hj = tl.load(seg_h_ptr + (pid_b * num_segs + j) * d * n + nd, mask=nd_mask, other=0.0)
            h = tl.exp2(sdt[None, :] * A2) * h + hj
    sum_dt = tl.zeros((BD,), dtype=tl.float32)
    start = seg * seg_len
    end = tl.minimum(L, start + seg_len)
    queue = ()
    for i in tl.static_range(P):
        queue = queue + (_load_fwd_step(pu, pdt, pz, pbc, start + i, end - 1, su_l, sdt_l, sz_l, sbc_l, n,
                                        dmask, nmask, HAS_Z and not LOCAL),)
    for c in range(start // T, tl.cdiv(end, T)):
        if SAVE and not LOCAL:  # pass 1 starts from a zero state: only pass 2 has the true states
            bp = tl.make_block_ptr(hc_ptr + (pid_b * tl.cdiv(L, T) + c) * d * n, (n, d), (d, 1),
                                   (0, tl.program_id(1) * BD), (N, BD), (1, 0))
            tl.store(bp, h, boundary_check=(0, 1))
        for i in tl.static_range(T):
            t = c * T + i
            u, raw, z, Bt, Ct = queue[0]
            rest = ()
            for k in tl.static_range(1, P):
                rest = rest + (queue[k],)
            queue = rest + (_load_fwd_step(pu, pdt, pz, pbc, t + P, end - 1, su_l, sdt_l, sz_l, sbc_l, n,
                                           dmask, nmask, HAS_Z and not LOCAL),)
            m = dmask & (t < end)
            dt, _ = _delta(raw, bias, m, SOFTPLUS, FAST)
            u = u.to(tl.float32)
            h = tl.exp2(dt[None, :] * A2) * h + Bt.to(tl.float32)[:, None] * (dt * u)[None, :]
            if LOCAL:
                sum_dt += dt
            else:
                y = tl.sum(h * Ct.to(tl.float32)[:, None], axis=0) + Dv * u
                if HAS_Z:
                    y = _gated(y, z.to(tl.float32), FAST)
                tl.store(py + t * d, y.to(y_ptr.dtype.element_ty), mask=m)
    if LOCAL:
        tl.store(seg_h_ptr + (pid_b * num_segs + seg) * d * n + nd, h, mask=nd_mask)
        tl.store(seg_dt_ptr + (pid_b * num_segs + seg) * d + offs_d, sum_dt, mask=dmask)
    elif seg == num_segs - 1:
        hT = hT_ptr + pid_b * d * n + offs_d[:, None] * shT_d + offs_n[None, :] * shT_n
        tl.store(hT, tl.trans(h), mask=tl.trans(nd_mask))


@triton.jit
def _shfl_xor(x, m: tl.constexpr):
    """x from the lane whose id differs from this one's by the bit mask ``m`` (8, 4, 2 or 1; a warp
    shuffle, in which every lane takes part)."""
    if m == 8:
        return tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, 8, 0x1f, -1;", "=r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    elif m == 4:
        return tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, 4, 0x1f, -1;", "=r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    elif m == 2:
        return tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, 2, 0x1f, -1;", "=r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, 1, 0x1f, -1;", "=r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _sum_round(x, j, dup, c, m: tl.constexpr):
    """One shuffle round of :func:`_store_channel_sum` over channel bit ``m``: (values, their j,
    duplicated bits)."""
    bit = (c & m) != 0
    if x.shape[0] > 1:  # halve: keep the half this lane's bit names, add the partner's copy of it
        half: tl.constexpr = x.shape[0] // 2
        lo, hi = tl.split(tl.permute(tl.reshape(x, (2, half, 2, 16)), (1, 2, 3, 0)))
        keep = tl.where(bit[None, None, :], hi, lo)
        send = tl.where(bit[None, None, :], lo, hi)
        x = keep + _shfl_xor(send, m)
        j = j + tl.where(bit, half, 0)
    else:
        x = x + _shfl_xor(x, m)
        dup = dup | m
    return x, j, dup


@triton.jit
def _store_channel_sum(ptr, v, ok, n, N: tl.constexpr):
    """Store the sum over channels of an (N, 16) (state, channel) tile of one warp: ptr[i] = Σ_c v[i, c]
    for i < n where ``ok``.

    For the layout the backward's tiles get at 16 channels on one warp (lane = 16·p + c: channel
    c, and states p, p + 2, ... of it in the lane's registers), as a transposing reduction: each
    shuffle round over a channel bit halves the values a lane holds (it keeps the half that its
    bit names and adds its partner's copy of that half) until one is left, so the N/2 sums of a
    lane take N/2 - 1 shuffles and a few more for the remaining bits, against 4·N/2 for
    ``tl.sum`` (a butterfly of every value). Afterwards lane (p, c) holds the sum of state
    2·j(c) + p, j(c) read from the channel bits that chose halves; lanes that differ only in the
    other bits hold the same sum, and only the lowest stores it.
    """
    c = tl.arange(0, 16)
    x = tl.reshape(v, (N // 2, 2, 16))  # (j, p, c): state 2j + p
    j = tl.zeros((16,), dtype=tl.int32)
    dup = tl.zeros((16,), dtype=tl.int32)  # the channel bits whose lanes hold the same sums
    x, j, dup = _sum_round(x, j, dup, c, 8)
    x, j, dup = _sum_round(x, j, dup, c, 4)
    x, j, dup = _sum_round(x, j, dup, c, 2)
    x, j, dup = _sum_round(x, j, dup, c, 1)
    x = tl.reshape(x, (2, 16))
    state = 2 * j[None, :] + tl.arange(0, 2)[:, None]
    tl.store(ptr + state, x, mask=((c & dup) == 0)[None, :] & (state < n) & ok)


@triton.jit(do_not_specialize=["d", "scratch_row", "hide_zero", "sA_d", "sA_n"])
def _scan_bwd_kernel(
    u_ptr, dt_ptr, z_ptr, bc_ptr, A_ptr, D_ptr, bias_ptr, hc_ptr, dy_ptr, dhT_ptr, seg_k_ptr, seg_dt_ptr,
    scratch_ptr, du_ptr, ddt_ptr, dz_ptr, dbc_ptr, dA_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    L, d, seg_len, num_segs, num_dblocks, scratch_row, hide_zero,
    su_b, su_l, su_d, sdt_b, sdt_l, sdt_d, sz_b, sz_l, sz_d, sbc_b, sbc_l, sA_d, sA_n, sD, sbias,
    n: tl.constexpr, HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_DHT: tl.constexpr,
    LOCAL: tl.constexpr, N: tl.constexpr, T: tl.constexpr, BD: tl.constexpr, P: tl.constexpr,
    FAST: tl.constexpr, SCATTER: tl.constexpr,
):
    """One program: the backward of BD channels of one sequence over one time segment, last step
    first. With LOCAL only the adjoint runs, from a zero carry, and the carry at the segment's
    start and its ΣΔ are written (pass 1); otherwise every gradient is formed (pass 2). A chunk's
    recomputed states go through a per-program scratch (in L1): kept in registers instead, they
    take the registers the rest of the step needs, and the program spills.

    Per-sequence outputs du, dΔ, dz are written in place; dB and dC as sums over this program's
    channels (summed over programs by the caller); dA, dD and the Δ bias's gradient as this
    program's sums over its steps.
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BD + tl.arange(0, BD)
    seg = tl.program_id(2)
    if LOCAL:  # pass 1 skips the first segment, whose carry nothing needs
        seg += 1
    offs_n = tl.arange(0, N)
    dmask = offs_d < d
    nmask = offs_n < n
    nd_mask = nmask[:, None] & dmask[None, :]
    nd = offs_n[:, None] * d + offs_d[None, :]
    A2 = _channel_major_load(A_ptr, offs_d, offs_n, sA_d, sA_n, nd_mask) * LOG2E
    Dv = tl.load(D_ptr + offs_d * sD, mask=dmask, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + offs_d * sbias, mask=dmask, other=0.0).to(tl.float32)
    pu = u_ptr + pid_b * su_b + offs_d * su_d
    pdt = dt_ptr + pid_b * sdt_b + offs_d * sdt_d
    pz = z_ptr + pid_b * sz_b + offs_d * sz_d
    pdy = dy_ptr + pid_b * L * d + offs_d  # dy and the outputs are contiguous (b, L, d)
    pbc = bc_ptr + pid_b * sbc_b + offs_n
    start = seg * seg_len
    end = tl.minimum(L, start + seg_len)
    first_chunk = start // T
    chunks = tl.cdiv(end, T) - first_chunk
    prog = (pid_b * num_segs + seg) * num_dblocks + pid_d  # this program's scratch

    carry = tl.zeros((N, BD), dtype=tl.float32)  # a_{t+1} g_{t+1}: dL/ds_t through later steps
    if not LOCAL:
        if HAS_DHT:
            carry = tl.load(dhT_ptr + pid_b * d * n + nd, mask=nd_mask, other=0.0)
        for jj in range(num_segs - 1 - seg):  # later segments, last first: k <- k_j + exp(A ΣΔ_j) k
            j = num_segs - 1 - jj
            sdt = tl.load(seg_dt_ptr + (pid_b * num_segs + j) * d + offs_d, mask=dmask, other=0.0)
            kj = tl.load(seg_k_ptr + (pid_b * num_segs + j) * d * n + nd, mask=nd_mask, other=0.0)
            carry = kj + tl.exp2(sdt[None, :] * A2) * carry
    sum_dt = tl.zeros((BD,), dtype=tl.float32)
    dA_acc = tl.zeros((N, BD), dtype=tl.float32)
    dD_acc = tl.zeros((BD,), dtype=tl.float32)
    dbias_acc = tl.zeros((BD,), dtype=tl.float32)
    scratch = scratch_ptr + prog * 2 * T * N * scratch_row + offs_n[:, None] * scratch_row + tl.arange(0, BD)[None, :]
    pdbc = dbc_ptr + ((pid_b * num_dblocks + pid_d) * L) * 2 * n

    for cc in range(chunks):
        c = first_chunk + chunks - 1 - cc
        # two scratch slots, alternating by chunk: an address that changes with the chunk keeps the
        # compiler from hoisting every step's (state, channel) addresses out of the loop
        slot = scratch + (c % 2) * T * N * scratch_row
        if not LOCAL:  # the chunk's states, first to last, from the one saved at its start
            h = tl.load(hc_ptr + (pid_b * tl.cdiv(L, T) + c) * d * n + nd, mask=nd_mask, other=0.0)
            queue = ()
            for i in tl.static_range(P):
                queue = queue + (_load_step(pu, pdt, pz, pdy, pbc, c * T + i, end, su_l, sdt_l, sz_l, d, sbc_l,
                                            n, dmask, nmask, False, False),)
            for i in tl.static_range(T):
                t = c * T + i
                u, raw, _, _, Bt, _ = queue[0]
                rest = ()
                for k in tl.static_range(1, P):
                    rest = rest + (queue[k],)
                queue = rest + (_load_step(pu, pdt, pz, pdy, pbc, t + P, tl.minimum(end, c * T + T), su_l,
                                           sdt_l, sz_l, d, sbc_l, n, dmask, nmask, False, False),)
                dt, _ = _delta(raw, bias, dmask & (t < end), SOFTPLUS, FAST)
                tl.store(slot + i * N * scratch_row, h)  # s_{t-1}
                h = tl.exp2(dt[None, :] * A2) * h + Bt.to(tl.float32)[:, None] * (dt * u.to(tl.float32))[None, :]
            tl.debug_barrier()
        # The same slot, through an offset the compiler cannot see is zero: otherwise it forwards
        # the stored states to these loads and keeps all T of them in registers (spilling).
        reread = slot + hide_zero
        queue = ()
        for i in tl.static_range(P):
            queue = queue + (_load_step(pu, pdt, pz, pdy, pbc, c * T + T - 1 - i, end, su_l, sdt_l, sz_l,
                                        d, sbc_l, n, dmask, nmask, HAS_Z, True),)
        for i in tl.static_range(T):
            ii = T - 1 - i
            t = c * T + ii
            u, raw, z, dy, Bt, Ct = queue[0]
            rest = ()
            for k in tl.static_range(1, P):
                rest = rest + (queue[k],)
            queue = rest + (_load_step(pu, pdt, pz, pdy, pbc, t - P, end, su_l, sdt_l, sz_l, d, sbc_l, n,
                                       dmask, nmask, HAS_Z, True),)
            m = dmask & (t < end)
            dt, x = _delta(raw, bias, m, SOFTPLUS, FAST)
            a = tl.exp2(dt[None, :] * A2)
            u = u.to(tl.float32)
            dy = dy.to(tl.float32)
            Bf = Bt.to(tl.float32)[:, None]
            Cf = Ct.to(tl.float32)[:, None]
            if LOCAL:
                if HAS_Z:
                    zf = z.to(tl.float32)
                    dy = dy * zf * tl.sigmoid(zf)
                carry = a * (Cf * dy[None, :] + carry)
                sum_dt += dt
            else:
                before = a * tl.load(reread + ii * N * scratch_row)  # a_t s_{t-1}
                s = before + Bf * (dt * u)[None, :]
                if HAS_Z:  # out = (y + D u) silu(z)
                    zf = z.to(tl.float32)
                    sig = tl.sigmoid(zf)
                    y = tl.sum(s * Cf, axis=0) + Dv * u
                    tl.store(dz_ptr + pid_b * L * d + t * d + offs_d,
                             (dy * y * sig * (1.0 + zf * (1.0 - sig))).to(dz_ptr.dtype.element_ty), mask=m)
                    dy = dy * zf * sig
                g = Cf * dy[None, :] + carry  # dL/ds_t
                gB = tl.sum(g * Bf, axis=0)
                ddt = tl.sum(g * A2 * before, axis=0) * LN2 + gB * u
                if SOFTPLUS:
                    ddt = ddt * tl.where(x > 20.0, 1.0, tl.sigmoid(x))
                ddt = tl.where(m, ddt, 0.0)
                tl.store(du_ptr + pid_b * L * d + t * d + offs_d, (dt * gB + Dv * dy).to(du_ptr.dtype.element_ty),
                         mask=m)
                tl.store(ddt_ptr + pid_b * L * d + t * d + offs_d, ddt.to(ddt_ptr.dtype.element_ty), mask=m)
                if SCATTER:  # dB, dC: sums over this program's channels
                    _store_channel_sum(pdbc + t * 2 * n, g * (dt * u)[None, :], t < end, n, N)
                    _store_channel_sum(pdbc + t * 2 * n + n, s * dy[None, :], t < end, n, N)
                else:
                    ok = nmask & (t < end)
                    tl.store(pdbc + offs_n + t * 2 * n, tl.sum(g * (dt * u)[None, :], axis=1), mask=ok)
                    tl.store(pdbc + offs_n + t * 2 * n + n, tl.sum(s * dy[None, :], axis=1), mask=ok)
                dA_acc += g * dt[None, :] * before
                dD_acc += dy * u
                dbias_acc += ddt
                carry = a * g
        if not LOCAL:
            tl.debug_barrier()  # the next chunk's forward overwrites the scratch
    if LOCAL:
        tl.store(seg_k_ptr + (pid_b * num_segs + seg) * d * n + nd, carry, mask=nd_mask)
        tl.store(seg_dt_ptr + (pid_b * num_segs + seg) * d + offs_d, sum_dt, mask=dmask)
    else:
        if seg == 0:
            tl.store(dh0_ptr + pid_b * d * n + nd, carry, mask=nd_mask)
        row = pid_b * num_segs + seg  # this program's channels of its segment's partial sums
        tl.store(dA_ptr + row * d * n + nd, dA_acc, mask=nd_mask)
        tl.store(dD_ptr + row * d + offs_d, dD_acc, mask=dmask)
        tl.store(dbias_ptr + row * d + offs_d, dbias_acc, mask=dmask)


def _strides(x: Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def segments_for(batch: int, blocks: int, length: int, chunk: int, target: int | None = None) -> tuple[int, int]:
    """(number of time segments, segment length in steps, a multiple of ``chunk``) for about
    ``target`` programs (default ``TARGET_PROGRAMS``)."""
    want = max(1, (target or TARGET_PROGRAMS) // max(1, batch * blocks))
    count = max(1, min(want, length // MIN_SEGMENT))
    return split_steps(length, count, chunk)


@functools.lru_cache(maxsize=256)
def backward_segments(batch: int, blocks: int, length: int, chunk: int, wave: int, min_segment: int
                      ) -> tuple[int, int]:
    """(number of time segments, segment length) for the backward, whose programs run in waves of
    ``wave`` at a time (SMs x programs an SM): of the counts up to ``length // min_segment`` and
    up to four waves, the one whose waves x segment length is least (the fewest segments of
    equals). A wave that ends with few programs costs as much as a full one, so a count that fills
    its waves beats a slightly larger one that starts another wave."""
    if wave < 1:
        raise ValueError(f"a wave of {wave} programs")
    most = max(1, min(length // min_segment, 4 * wave // max(1, batch * blocks)))
    best = None
    for count in range(1, most + 1):
        segs, seg_len = split_steps(length, count, chunk)
        cost = triton.cdiv(batch * blocks * segs, wave) * seg_len
        if best is None or cost < best[0]:
            best = (cost, segs, seg_len)
    return best[1], best[2]


def _backward_wave(device: torch.device, warps: int) -> int:
    """Programs of the backward's pass 2 that run at once: SMs x programs an SM, as the register
    cap allows (the compiler's choice, up to 255 registers, without one; on a CPU, under Triton's
    interpreter, the cap is not applied but the count only shapes the segments)."""
    registers = 8 * triton.cdiv(BWD_MAXNREG or 255, 8) * 32 * warps
    return num_sms(device) * max(1, 65536 // registers)


def _segments(batch: int, blocks: int, length: int, chunk: int, segments: int | None, target: int | None = None
              ) -> tuple[int, int]:
    """The caller's number of ``segments`` if given, else :func:`segments_for`'s."""
    if segments is None:
        return segments_for(batch, blocks, length, chunk, target)
    return split_steps(length, segments, chunk)


def _adjacent_pair(B: Tensor, C: Tensor) -> Tensor | None:
    """(B, C) as one (b, L, 2, n) view when C's columns directly follow B's in the same storage
    (as when both are split from one row), else None."""
    if B.dtype != C.dtype or B.shape != C.shape or B.stride() != C.stride() or B.stride(2) != 1:
        return None
    if B.untyped_storage().data_ptr() != C.untyped_storage().data_ptr():
        return None
    n = B.shape[2]
    if C.storage_offset() - B.storage_offset() != n:
        return None
    return B.as_strided((*B.shape[:2], 2, n), (B.stride(0), B.stride(1), n, 1))


def _params(A: Tensor, D: Tensor | None, delta_bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor, tuple]:
    """A, D and the Δ bias as the kernels read them (in their own dtypes and strides; zeros for
    a missing D or bias), and those strides."""
    d = A.shape[0]
    zeros = A.new_zeros(d, dtype=torch.float32) if D is None or delta_bias is None else None
    D = zeros if D is None else D
    delta_bias = zeros if delta_bias is None else delta_bias
    return A, D, delta_bias, (A.stride(0), A.stride(1), D.stride(0), delta_bias.stride(0))


def _fast_math(x: Tensor) -> bool:
    """Approximate log and division in the kernels: on a GPU (the interpreter has no such
    instructions)."""
    return x.is_cuda and not interpreting()


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, block_d, warps, segments,
                save):
        b, L, d = u.shape
        n = A.shape[1]
        f32 = dict(dtype=torch.float32, device=u.device)
        A, D32, bias32, param_strides = _params(A, D, delta_bias)
        h0 = initial_state
        bc = torch.empty(b, L, 2, n, **f32)  # one aligned float32 row (B, C) per step
        pair = _adjacent_pair(B, C)
        if pair is not None:  # one copy (B and C are neighbouring columns of one projection)
            bc.copy_(pair)
        else:
            torch.stack((B, C), dim=2, out=bc)
        fwd_block_d = block_d or BLOCK_D
        blocks = triton.cdiv(d, fwd_block_d)
        T = CHUNK if save else FWD_UNROLL  # segments start at multiples of T
        num_segs, seg_len = _segments(b, blocks, L, T, segments)
        y = torch.empty(b, L, d, dtype=u.dtype, device=u.device)
        final = torch.empty(b, d, n, **f32)
        hc = torch.empty(b, triton.cdiv(L, CHUNK), n, d, **f32) if save else final
        seg_h = torch.empty(b, num_segs, n, d, **f32)
        seg_dt = torch.empty(b, num_segs, d, **f32)
        zz = z if z is not None else u
        args = (
            u, delta, zz, bc, A, D32, bias32, h0 if h0 is not None else final, seg_h, seg_dt,
            y, final, hc, L, d, seg_len, num_segs,
            *_strides(u), *_strides(delta), *_strides(zz), bc.stride(0), bc.stride(1), *param_strides,
            *(_strides(h0) if h0 is not None else (0, 0, 0)), final.stride(1), final.stride(2),
        )
        meta = dict(n=n, HAS_Z=z is not None, SOFTPLUS=delta_softplus, HAS_H0=h0 is not None, SAVE=save,
                    N=triton.next_power_of_2(n), T=T, BD=fwd_block_d, P=FWD_SAVE_PREFETCH if save else FWD_PREFETCH,
                    EVEN_D=d % fwd_block_d == 0, FAST=_fast_math(u), num_warps=warps or WARPS)
        if num_segs > 1:  # pass 1: every segment but the last from a zero state
            _scan_fwd_kernel[(b, blocks, num_segs - 1)](*args, **meta, LOCAL=True)
        _scan_fwd_kernel[(b, blocks, num_segs)](*args, **meta, LOCAL=False)
        if save:
            ctx.save_for_backward(u, delta, zz, B, C, A, D32, bias32, hc)
            ctx.meta = (z is not None, delta_softplus, block_d, warps, segments)  # the caller's launch
            ctx.dtypes = tuple(x.dtype if x is not None else None for x in (A, D, delta_bias, initial_state, B, C))
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        u, delta, zz, B, C, A, D32, bias32, hc = ctx.saved_tensors
        # B and C in their own dtype: float32 rows would make the backward spill more
        bc = torch.stack((B, C.to(B.dtype)), dim=2)
        has_z, delta_softplus, block_d, warps, segments = ctx.meta
        b, L, d = u.shape
        n = A.shape[1]
        block_d, warps = block_d or BWD_BLOCK_D, warps or BWD_WARPS
        blocks = triton.cdiv(d, block_d)
        if segments is None and BWD_TARGET_PROGRAMS is None:
            num_segs, seg_len = backward_segments(b, blocks, L, CHUNK, _backward_wave(u.device, warps), MIN_SEGMENT)
        else:
            num_segs, seg_len = _segments(b, blocks, L, CHUNK, segments, BWD_TARGET_PROGRAMS)
        f32 = dict(dtype=torch.float32, device=u.device)
        dy = dy.contiguous()
        du = torch.empty(b, L, d, dtype=u.dtype, device=u.device)
        ddelta = torch.empty(b, L, d, dtype=delta.dtype, device=u.device)
        dz = torch.empty(b, L, d, dtype=zz.dtype, device=u.device) if has_z else du
        dbc = torch.empty(b, blocks, L, 2, n, **f32)
        dA = torch.empty(b * num_segs, n, d, **f32)  # sums over each segment's steps
        dD = torch.empty(b * num_segs, d, **f32)
        dbias = torch.empty(b * num_segs, d, **f32)
        dh0 = torch.empty(b, n, d, **f32)
        N = triton.next_power_of_2(n)
        scratch = torch.empty(b * num_segs * blocks, 2, CHUNK, N, block_d, **f32)  # s_{t-1} of one chunk
        seg_k = torch.empty(b, num_segs, n, d, **f32)
        seg_dt = torch.empty(b, num_segs, d, **f32)
        dhT = dfinal.float().transpose(1, 2).contiguous() if dfinal is not None else dh0
        args = (
            u, delta, zz, bc, A, D32, bias32, hc, dy, dhT, seg_k, seg_dt,
            scratch, du, ddelta, dz, dbc, dA, dD, dbias, dh0,
            L, d, seg_len, num_segs, blocks, block_d, 0,
            *_strides(u), *_strides(delta), *_strides(zz), bc.stride(0), bc.stride(1),
            A.stride(0), A.stride(1), D32.stride(0), bias32.stride(0),
        )
        meta = dict(n=n, HAS_Z=has_z, SOFTPLUS=delta_softplus, HAS_DHT=dfinal is not None,
                    N=N, T=CHUNK, BD=block_d, P=BWD_PREFETCH, FAST=_fast_math(u), num_warps=warps,
                    SCATTER=BWD_SCATTER and _fast_math(u) and block_d == 16 and warps == 1 and 2 <= N <= 16)
        if num_segs > 1:  # pass 1: the adjoint of every segment but the first from a zero carry
            _scan_bwd_kernel[(b, blocks, num_segs - 1)](*args, **meta, LOCAL=True)
        cap = dict(maxnreg=BWD_MAXNREG) if BWD_MAXNREG and meta["FAST"] else {}
        _scan_bwd_kernel[(b, blocks, num_segs)](*args, **meta, **cap, LOCAL=False)
        A_t, D_t, bias_t, h0_t, B_t, C_t = ctx.dtypes
        dbc = dbc.sum(1)
        return (
            du, ddelta, dA.sum(0).t().to(A_t), dbc[:, :, 0].to(B_t), dbc[:, :, 1].to(C_t),
            dD.sum(0).to(D_t) if D_t is not None else None,
            dz if has_z else None,
            dbias.sum(0).to(bias_t) if bias_t is not None else None,
            dh0.transpose(1, 2).to(h0_t) if h0_t is not None else None,
            None, None, None, None, None,
        )


def selective_scan_triton(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: Tensor | None = None,
    block_d: int | None = None,
    num_warps: int | None = None,
    segments: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Same signature and results as :func:`selective_scan_reference`. ``block_d`` (a power of
    two), ``num_warps`` and ``segments`` (time segments run in parallel) set the launches; by
    default ``BLOCK_D`` (``BWD_BLOCK_D`` for the backward), ``WARPS`` and :func:`segments_for`
    (:func:`backward_segments` for the backward)."""
    if u.dtype == torch.float64:
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    # Save the chunk states for a backward only when autograd records the call: parameters that
    # require gradients under no_grad (inference) would otherwise cost the forward a third more
    save = needs_grad(u, delta, A, B, C, D, z, delta_bias, initial_state)
    args = (u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, block_d, num_warps, segments, save)
    if not save:  # nothing for autograd to record: skip its Function machinery (host time per layer)
        return _TritonScan.forward(None, *args)
    return _TritonScan.apply(*args)
