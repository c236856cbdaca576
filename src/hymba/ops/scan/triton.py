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

# (chunk, block_d) measured fastest on an H200 (benchmarks/scan_gpu.py, NOTES-gpu.md): the wider
# tile for inference, the smaller one when the backward (which holds more tiles live) follows.
TILE_INFERENCE = (32, 8)
TILE_TRAINING = (16, 16)
NUM_WARPS = 4


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
    u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, h0_ptr,
    y_ptr, hT_ptr, hc_ptr,
    L, d, n, num_chunks,
    su_b, su_l, su_d, sdt_b, sdt_l, sdt_d, sz_b, sz_l, sz_d,
    sB_b, sB_l, sB_n, sC_b, sC_l, sC_n,
    HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, SAVE: tl.constexpr,
    N: tl.constexpr, T: tl.constexpr, BD: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, N)
    offs_t = tl.arange(0, T)
    dmask = offs_d < d
    nmask = offs_n < n
    dn_mask = dmask[:, None] & nmask[None, :]
    dn = offs_d[:, None] * n + offs_n[None, :]
    A = tl.load(A_ptr + dn, mask=dn_mask, other=0.0)
    Dv = tl.load(D_ptr + offs_d, mask=dmask, other=0.0)
    bias = tl.load(bias_ptr + offs_d, mask=dmask, other=0.0)
    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * d * n + dn, mask=dn_mask, other=0.0)
    else:
        h = tl.zeros((BD, N), dtype=tl.float32)
    for c in range(num_chunks):
        t = (c * T + offs_t).to(tl.int64)
        tmask = t < L
        m2 = tmask[:, None] & dmask[None, :]
        u = tl.load(u_ptr + pid_b * su_b + t[:, None] * su_l + offs_d[None, :] * su_d, mask=m2, other=0.0)
        u = u.to(tl.float32)
        dt = tl.load(dt_ptr + pid_b * sdt_b + t[:, None] * sdt_l + offs_d[None, :] * sdt_d, mask=m2, other=0.0)
        dt = dt.to(tl.float32) + bias[None, :]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(m2, dt, 0.0)
        tn = tmask[:, None] & nmask[None, :]
        Bt = tl.load(B_ptr + pid_b * sB_b + t[:, None] * sB_l + offs_n[None, :] * sB_n, mask=tn, other=0.0)
        Ct = tl.load(C_ptr + pid_b * sC_b + t[:, None] * sC_l + offs_n[None, :] * sC_n, mask=tn, other=0.0)
        decay = tl.exp(dt[:, :, None] * A[None, :, :])
        drive = (dt * u)[:, :, None] * Bt.to(tl.float32)[:, None, :]
        if SAVE:
            tl.store(hc_ptr + (pid_b * num_chunks + c) * d * n + dn, h, mask=dn_mask)
        a_cum, b_cum = tl.associative_scan((decay, drive), 0, _combine)
        hs = a_cum * h[None, :, :] + b_cum
        y = tl.sum(hs * Ct.to(tl.float32)[:, None, :], axis=2) + Dv[None, :] * u
        if HAS_Z:
            zt = tl.load(z_ptr + pid_b * sz_b + t[:, None] * sz_l + offs_d[None, :] * sz_d, mask=m2, other=0.0)
            zt = zt.to(tl.float32)
            y = y * zt * tl.sigmoid(zt)
        tl.store(y_ptr + (pid_b * L + t[:, None]) * d + offs_d[None, :], y.to(y_ptr.dtype.element_ty), mask=m2)
        h = tl.sum(tl.where((offs_t == T - 1)[:, None, None], hs, 0.0), axis=0)
    tl.store(hT_ptr + pid_b * d * n + dn, h, mask=dn_mask)


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
        h0 = tl.load(hc_ptr + (pid_b * num_chunks + c) * d * n + dn, mask=dn_mask, other=0.0)
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


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, chunk, block_d, warps):
        b, L, d = u.shape
        n = A.shape[1]
        f32 = dict(dtype=torch.float32, device=u.device)
        A32 = A.float().contiguous()
        D32 = D.float().contiguous() if D is not None else torch.zeros(d, **f32)
        bias32 = delta_bias.float().contiguous() if delta_bias is not None else torch.zeros(d, **f32)
        h0 = initial_state.float().contiguous() if initial_state is not None else None
        save = any(ctx.needs_input_grad)
        default = TILE_TRAINING if save else TILE_INFERENCE
        chunk, block_d = chunk or default[0], block_d or default[1]
        num_chunks = triton.cdiv(L, chunk)
        y = torch.empty(b, L, d, dtype=u.dtype, device=u.device)
        final = torch.empty(b, d, n, **f32)
        hc = torch.empty(b, num_chunks, d, n, **f32) if save else final
        zz = z if z is not None else u
        _scan_fwd_kernel[(b, triton.cdiv(d, block_d))](
            u, delta, zz, B, C, A32, D32, bias32, h0 if h0 is not None else final, y, final, hc,
            L, d, n, num_chunks, *_strides(u), *_strides(delta), *_strides(zz), *_strides(B), *_strides(C),
            HAS_Z=z is not None, SOFTPLUS=delta_softplus, HAS_H0=h0 is not None, SAVE=save,
            N=triton.next_power_of_2(n), T=chunk, BD=block_d, num_warps=warps,
        )
        if save:
            ctx.save_for_backward(u, delta, zz, B, C, A32, D32, bias32, hc)
            ctx.meta = (z is not None, delta_softplus, chunk, block_d, warps)
            ctx.dtypes = tuple(x.dtype if x is not None else None for x in (A, D, delta_bias, initial_state))
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        u, delta, zz, B, C, A32, D32, bias32, hc = ctx.saved_tensors
        has_z, softplus, chunk, block_d, warps = ctx.meta
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
    chunk: int | None = None,
    block_d: int | None = None,
    num_warps: int = NUM_WARPS,
) -> tuple[Tensor, Tensor]:
    """Same signature and results as :func:`selective_scan_reference`. ``chunk`` and ``block_d``
    (powers of two) set the kernels' tile, time steps × channels (default: tuned, see
    ``TILE_*``); ``num_warps`` its warps."""
    if u.dtype == torch.float64:
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    return _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, chunk, block_d, num_warps)
