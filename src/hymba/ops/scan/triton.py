"""Selective scan in Triton (CUDA): a forward and a backward kernel, both chunked over time.

One program owns ``BLOCK_D`` channels of one sequence and walks its time steps in chunks of
``CHUNK``. Inside a chunk the recurrence ``s_t = a_t s_{t-1} + x_t`` (a_t = exp(Δ_t A),
x_t = Δ_t B_t u_t) runs as a parallel associative scan over a (CHUNK, BLOCK_D, d_state) tile in
float32 registers; the state carries from chunk to chunk. Δ's softplus and bias, the D skip and
the SiLU gate are fused, so each input is read once and y is written once.

The backward walks the chunks from last to first. It recomputes each chunk's states from the
state saved at the chunk's start (one (d, d_state) state per chunk, float32), runs the adjoint
recurrence ``g_t = C_t dy_t + a_{t+1} g_{t+1}`` as a reverse scan, and forms every gradient from
(s_t, g_t) in the same pass. Gradients of B and C are summed over channels per program and then
over programs; those of A, D and the Δ bias are accumulated in registers over time.

Same signature and semantics as :func:`hymba.ops.scan.reference.selective_scan_reference`;
float64 inputs go to the chunked PyTorch scan (the kernels compute in float32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .chunked import selective_scan_chunked

# Forward: BLOCK_D channels per program, one per lane, in FWD_WARPS warps; outputs are written
# CHUNK steps at a time. The sequence is cut into time segments until about TARGET_PROGRAMS
# programs run (at batch 1 the channels alone give too few), none shorter than MIN_SEGMENT steps.
FWD_BLOCK_D = 32
FWD_WARPS = 1
CHUNK = 16
TARGET_PROGRAMS = 1024
MIN_SEGMENT = 256
# Backward: (chunk, block_d) and warps measured fastest on an H200 (benchmarks/scan_gpu.py). The
# forward saves the state at the start of every backward chunk.
BWD_TILE = (16, 16)
BWD_WARPS = 4


LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _combine(a1, b1, a2, b2):
    """Compose two affine maps s -> a s + b, the earlier (a1, b1) first."""
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _softplus(x):
    """F.softplus with threshold 20 (the identity above it)."""
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x))))


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, h0_ptr, seg_h_ptr, seg_dt_ptr,
    y_ptr, hT_ptr, hc_ptr,
    L, d, seg_len, num_segs,
    su_b, su_l, su_d, sdt_b, sdt_l, sdt_d, sz_b, sz_l, sz_d,
    sB_b, sB_l, sB_n, sC_b, sC_l, sC_n,
    n: tl.constexpr, HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr,
    SAVE: tl.constexpr, LOCAL: tl.constexpr, N: tl.constexpr, T: tl.constexpr, BD: tl.constexpr,
):
    """One program: BD channels of one sequence over one time segment, one step after another.

    The state is an (N, BD) tile, one channel per lane with its whole state in registers, so the
    output's sum over the state needs no shuffles. With LOCAL the program only runs its segment
    from a zero state and writes the segment's end state and ΣΔ (pass 1); otherwise it first
    folds the earlier segments' results into its start state, then writes y (pass 2).
    """
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    seg = tl.program_id(2)
    offs_n = tl.arange(0, N)
    offs_t = tl.arange(0, T)
    dmask = offs_d < d
    nmask = offs_n < n
    nd_mask = nmask[:, None] & dmask[None, :]
    nd = offs_n[:, None] * d + offs_d[None, :]  # states are stored (state, channel): lanes read rows
    A2 = tl.load(A_ptr + nd, mask=nd_mask, other=0.0) * LOG2E
    Dv = tl.load(D_ptr + offs_d, mask=dmask, other=0.0)
    bias = tl.load(bias_ptr + offs_d, mask=dmask, other=0.0)
    h = tl.zeros((N, BD), dtype=tl.float32)
    if not LOCAL:
        if HAS_H0:
            h = tl.load(h0_ptr + pid_b * d * n + nd, mask=nd_mask, other=0.0)
        for j in range(seg):  # earlier segments: s <- exp(A ΣΔ_j) s + local end state_j
            sdt = tl.load(seg_dt_ptr + (pid_b * num_segs + j) * d + offs_d, mask=dmask, other=0.0)
            hj = tl.load(seg_h_ptr + (pid_b * num_segs + j) * d * n + nd, mask=nd_mask, other=0.0)
            h = tl.exp2(sdt[None, :] * A2) * h + hj
    sum_dt = tl.zeros((BD,), dtype=tl.float32)
    end = tl.minimum(L, (seg + 1) * seg_len)
    for c in range(seg * seg_len // T, tl.cdiv(end, T)):
        if SAVE:
            tl.store(hc_ptr + (pid_b * tl.cdiv(L, T) + c) * d * n + nd, h, mask=nd_mask)
        ys = tl.zeros((T, BD), dtype=tl.float32)
        for i in tl.static_range(T):
            t = c * T + i
            m = dmask & (t < end)
            u = tl.load(u_ptr + pid_b * su_b + t * su_l + offs_d * su_d, mask=m, other=0.0).to(tl.float32)
            dt = tl.load(dt_ptr + pid_b * sdt_b + t * sdt_l + offs_d * sdt_d, mask=m, other=0.0)
            dt = dt.to(tl.float32) + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            dt = tl.where(m, dt, 0.0)  # a masked step leaves the state as it is
            Bt = tl.load(B_ptr + pid_b * sB_b + t * sB_l + offs_n * sB_n, mask=nmask & (t < end), other=0.0)
            h = tl.exp2(dt[None, :] * A2) * h + Bt.to(tl.float32)[:, None] * (dt * u)[None, :]
            if LOCAL:
                sum_dt += dt
            else:
                Ct = tl.load(C_ptr + pid_b * sC_b + t * sC_l + offs_n * sC_n, mask=nmask & (t < end), other=0.0)
                y = tl.sum(h * Ct.to(tl.float32)[:, None], axis=0) + Dv * u
                if HAS_Z:
                    zt = tl.load(z_ptr + pid_b * sz_b + t * sz_l + offs_d * sz_d, mask=m, other=0.0)
                    zt = zt.to(tl.float32)
                    y = y * zt * tl.sigmoid(zt)
                ys = tl.where(offs_t[:, None] == i, y[None, :], ys)
        if not LOCAL:
            tt = (c * T + offs_t).to(tl.int64)
            m2 = (tt < end)[:, None] & dmask[None, :]
            tl.store(y_ptr + (pid_b * L + tt[:, None]) * d + offs_d[None, :], ys.to(y_ptr.dtype.element_ty), mask=m2)
    if LOCAL:
        tl.store(seg_h_ptr + (pid_b * num_segs + seg) * d * n + nd, h, mask=nd_mask)
        tl.store(seg_dt_ptr + (pid_b * num_segs + seg) * d + offs_d, sum_dt, mask=dmask)
    elif seg == num_segs - 1:
        tl.store(hT_ptr + pid_b * d * n + nd, h, mask=nd_mask)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, hc_ptr, dy_ptr, dhT_ptr,
    du_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    L, d, n, num_chunks, num_dblocks,
    su_b, su_l, su_d, sdt_b, sdt_l, sdt_d, sz_b, sz_l, sz_d,
    sB_b, sB_l, sB_n, sC_b, sC_l, sC_n,
    HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_DHT: tl.constexpr,
    N: tl.constexpr, T: tl.constexpr, BD: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, N)
    offs_t = tl.arange(0, T)
    dmask = offs_d < d
    nmask = offs_n < n
    dn_mask = dmask[:, None] & nmask[None, :]
    dn = offs_d[:, None] * n + offs_n[None, :]
    A = tl.load(A_ptr + dn, mask=dn_mask, other=0.0)
    Dv = tl.load(D_ptr + offs_d, mask=dmask, other=0.0)
    bias = tl.load(bias_ptr + offs_d, mask=dmask, other=0.0)
    if HAS_DHT:
        k = tl.load(dhT_ptr + pid_b * d * n + dn, mask=dn_mask, other=0.0)  # dL/d(state before next chunk)
    else:
        k = tl.zeros((BD, N), dtype=tl.float32)
    dA_acc = tl.zeros((BD, N), dtype=tl.float32)
    dD_acc = tl.zeros((BD,), dtype=tl.float32)
    dbias_acc = tl.zeros((BD,), dtype=tl.float32)
    for cc in range(num_chunks):
        c = num_chunks - 1 - cc
        t = (c * T + offs_t).to(tl.int64)
        tmask = t < L
        m2 = tmask[:, None] & dmask[None, :]
        tn = tmask[:, None] & nmask[None, :]
        u = tl.load(u_ptr + pid_b * su_b + t[:, None] * su_l + offs_d[None, :] * su_d, mask=m2, other=0.0)
        u = u.to(tl.float32)
        x = tl.load(dt_ptr + pid_b * sdt_b + t[:, None] * sdt_l + offs_d[None, :] * sdt_d, mask=m2, other=0.0)
        x = x.to(tl.float32) + bias[None, :]
        if SOFTPLUS:
            dt = tl.where(m2, _softplus(x), 0.0)
        else:
            dt = tl.where(m2, x, 0.0)
        # Δ one step later, inside this chunk only (the carry k already holds the next chunk's decay)
        nxt = (offs_t < T - 1)[:, None] & (t + 1 < L)[:, None] & dmask[None, :]
        xn = tl.load(dt_ptr + pid_b * sdt_b + (t + 1)[:, None] * sdt_l + offs_d[None, :] * sdt_d, mask=nxt, other=0.0)
        xn = xn.to(tl.float32) + bias[None, :]
        if SOFTPLUS:
            xn = _softplus(xn)
        dtn = tl.where(nxt, xn, 0.0)
        Bt = tl.load(B_ptr + pid_b * sB_b + t[:, None] * sB_l + offs_n[None, :] * sB_n, mask=tn, other=0.0)
        Ct = tl.load(C_ptr + pid_b * sC_b + t[:, None] * sC_l + offs_n[None, :] * sC_n, mask=tn, other=0.0)
        Bt = Bt.to(tl.float32)
        Ct = Ct.to(tl.float32)
        dy = tl.load(dy_ptr + (pid_b * L + t[:, None]) * d + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
        # forward states of this chunk from its saved start state
        h0 = tl.load(hc_ptr + (pid_b * num_chunks + c) * d * n + offs_n[None, :] * d + offs_d[:, None], mask=dn_mask, other=0.0)
        decay = tl.exp(dt[:, :, None] * A[None, :, :])
        drive = (dt * u)[:, :, None] * Bt[:, None, :]
        a_cum, b_cum = tl.associative_scan((decay, drive), 0, _combine)
        hs = a_cum * h0[None, :, :] + b_cum
        # the gate: out = (y_ssm + D u) * silu(z)
        if HAS_Z:
            zt = tl.load(z_ptr + pid_b * sz_b + t[:, None] * sz_l + offs_d[None, :] * sz_d, mask=m2, other=0.0)
            zt = zt.to(tl.float32)
            sig = tl.sigmoid(zt)
            y_pre = tl.sum(hs * Ct[:, None, :], axis=2) + Dv[None, :] * u
            dz = dy * y_pre * sig * (1.0 + zt * (1.0 - sig))
            tl.store(dz_ptr + (pid_b * L + t[:, None]) * d + offs_d[None, :], dz.to(dz_ptr.dtype.element_ty), mask=m2)
            dy = dy * zt * sig
        # adjoint: g_t = C_t dy_t + a_{t+1} g_{t+1}, g after the chunk's last step = k
        alpha = tl.exp(dtn[:, :, None] * A[None, :, :])
        g_a, g_b = tl.associative_scan((alpha, dy[:, :, None] * Ct[:, None, :]), 0, _combine, reverse=True)
        g = g_b + g_a * k[None, :, :]
        before = hs - drive  # a_t s_{t-1}
        ddt = tl.sum(g * (A[None, :, :] * before + Bt[:, None, :] * u[:, :, None]), axis=2)
        dA_acc += tl.sum(g * dt[:, :, None] * before, axis=0)
        du = tl.sum(g * Bt[:, None, :], axis=2) * dt + Dv[None, :] * dy
        dD_acc += tl.sum(dy * u, axis=0)
        if SOFTPLUS:
            ddt = ddt * tl.where(x > 20.0, 1.0, tl.sigmoid(x))
        ddt = tl.where(m2, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=0)
        out = (pid_b * L + t[:, None]) * d + offs_d[None, :]
        tl.store(du_ptr + out, du.to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddt_ptr + out, ddt.to(ddt_ptr.dtype.element_ty), mask=m2)
        part = ((pid_b * num_dblocks + pid_d) * L + t[:, None]) * n + offs_n[None, :]
        tl.store(dB_ptr + part, tl.sum(g * (dt * u)[:, :, None], axis=1), mask=tn)
        tl.store(dC_ptr + part, tl.sum(hs * dy[:, :, None], axis=1), mask=tn)
        k = tl.sum(tl.where((offs_t == 0)[:, None, None], decay * g, 0.0), axis=0)
    tl.store(dh0_ptr + pid_b * d * n + dn, k, mask=dn_mask)
    tl.store(dA_ptr + pid_b * d * n + dn, dA_acc, mask=dn_mask)
    tl.store(dD_ptr + pid_b * d + offs_d, dD_acc, mask=dmask)
    tl.store(dbias_ptr + pid_b * d + offs_d, dbias_acc, mask=dmask)


def _strides(x: Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def segments_for(batch: int, blocks: int, length: int, chunk: int) -> tuple[int, int]:
    """(number of time segments, segment length in steps, a multiple of ``chunk``)."""
    want = max(1, TARGET_PROGRAMS // max(1, batch * blocks))
    count = max(1, min(want, length // MIN_SEGMENT))
    seg_len = triton.cdiv(triton.cdiv(max(length, 1), count), chunk) * chunk
    return triton.cdiv(max(length, 1), seg_len), seg_len


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, block_d, warps, segments):
        b, L, d = u.shape
        n = A.shape[1]
        f32 = dict(dtype=torch.float32, device=u.device)
        A32 = A.float().contiguous()
        D32 = D.float().contiguous() if D is not None else torch.zeros(d, **f32)
        bias32 = delta_bias.float().contiguous() if delta_bias is not None else torch.zeros(d, **f32)
        # the forward keeps states as (state, channel): a warp's lanes then read one row at a time
        h0 = initial_state.float().transpose(1, 2).contiguous() if initial_state is not None else None
        save = any(ctx.needs_input_grad)
        chunk = BWD_TILE[0] if save else CHUNK
        block_d, warps = block_d or FWD_BLOCK_D, warps or FWD_WARPS
        blocks = triton.cdiv(d, block_d)
        if segments is None:
            num_segs, seg_len = segments_for(b, blocks, L, chunk)
        else:
            seg_len = triton.cdiv(triton.cdiv(max(L, 1), segments), chunk) * chunk
            num_segs = triton.cdiv(max(L, 1), seg_len)
        y = torch.empty(b, L, d, dtype=u.dtype, device=u.device)
        final = torch.empty(b, n, d, **f32)
        hc = torch.empty(b, triton.cdiv(L, chunk), n, d, **f32) if save else final
        seg_h = torch.empty(b, num_segs, n, d, **f32)
        seg_dt = torch.empty(b, num_segs, d, **f32)
        zz = z if z is not None else u
        args = (
            u, delta, zz, B, C, A32.t().contiguous(), D32, bias32, h0 if h0 is not None else final, seg_h, seg_dt,
            y, final, hc, L, d, seg_len, num_segs,
            *_strides(u), *_strides(delta), *_strides(zz), *_strides(B), *_strides(C),
        )
        meta = dict(n=n, HAS_Z=z is not None, SOFTPLUS=delta_softplus, HAS_H0=h0 is not None, SAVE=save,
                    N=triton.next_power_of_2(n), T=chunk, BD=block_d, num_warps=warps)
        if num_segs > 1:  # pass 1: every segment but the last from a zero state
            _scan_fwd_kernel[(b, blocks, num_segs - 1)](*args, **meta, LOCAL=True)
        _scan_fwd_kernel[(b, blocks, num_segs)](*args, **meta, LOCAL=False)
        if save:
            ctx.save_for_backward(u, delta, zz, B, C, A32, D32, bias32, hc)
            ctx.meta = (z is not None, delta_softplus)
            ctx.dtypes = tuple(x.dtype if x is not None else None for x in (A, D, delta_bias, initial_state))
        return y, final.transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, dy, dfinal):
        u, delta, zz, B, C, A32, D32, bias32, hc = ctx.saved_tensors
        has_z, softplus = ctx.meta
        (chunk, block_d), warps = BWD_TILE, BWD_WARPS
        b, L, d = u.shape
        n = A32.shape[1]
        num_dblocks = triton.cdiv(d, block_d)
        f32 = dict(dtype=torch.float32, device=u.device)
        dy = dy.contiguous()
        du = torch.empty(b, L, d, dtype=u.dtype, device=u.device)
        ddelta = torch.empty(b, L, d, dtype=delta.dtype, device=u.device)
        dz = torch.empty(b, L, d, dtype=zz.dtype, device=u.device) if has_z else du
        dB = torch.empty(b, num_dblocks, L, n, **f32)
        dC = torch.empty(b, num_dblocks, L, n, **f32)
        dA = torch.empty(b, d, n, **f32)
        dD = torch.empty(b, d, **f32)
        dbias = torch.empty(b, d, **f32)
        dh0 = torch.empty(b, d, n, **f32)
        dhT = dfinal.float().contiguous() if dfinal is not None else dh0
        _scan_bwd_kernel[(b, num_dblocks)](
            u, delta, zz, B, C, A32, D32, bias32, hc, dy, dhT,
            du, ddelta, dz, dB, dC, dA, dD, dbias, dh0,
            L, d, n, triton.cdiv(L, chunk), num_dblocks, *_strides(u), *_strides(delta), *_strides(zz), *_strides(B), *_strides(C),
            HAS_Z=has_z, SOFTPLUS=softplus, HAS_DHT=dfinal is not None,
            N=triton.next_power_of_2(n), T=chunk, BD=block_d, num_warps=warps,
        )
        A_t, D_t, bias_t, h0_t = ctx.dtypes
        return (
            du, ddelta, dA.sum(0).to(A_t), dB.sum(1).to(B.dtype), dC.sum(1).to(C.dtype),
            dD.sum(0).to(D_t) if D_t is not None else None,
            dz if has_z else None,
            dbias.sum(0).to(bias_t) if bias_t is not None else None,
            dh0.to(h0_t) if h0_t is not None else None,
            None, None, None, None,
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
    two), ``num_warps`` and ``segments`` (time segments run in parallel) set the forward's
    launch; by default ``FWD_*`` and :func:`segments_for`."""
    if u.dtype == torch.float64:
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    return _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, block_d, num_warps, segments)
