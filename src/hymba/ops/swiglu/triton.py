"""SiLU(gate) · up in Triton, elementwise: the forward with the reference's roundings (the SiLU
rounded to the input's dtype before the product), and a backward kernel for training."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._triton import pdl_launch, wait_for_producers


@triton.jit
def _silu_mul_kernel(g_ptr, u_ptr, out_ptr, n, BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_producers(PDL)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    keep = offs < n
    g = tl.load(g_ptr + offs, mask=keep, other=0.0)
    u = tl.load(u_ptr + offs, mask=keep, other=0.0).to(tl.float32)
    g32 = g.to(tl.float32)
    act = (g32 / (1.0 + tl.exp(-g32))).to(g.dtype, fp_downcast_rounding="rtne").to(tl.float32)
    tl.store(out_ptr + offs, (act * u).to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=keep)


def silu_mul_triton(gate: Tensor, up: Tensor) -> Tensor:
    """Same as ``F.silu(gate) * up`` for tensors of one shape and dtype."""
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)
    n = gate.numel()
    block = 1024
    if n:
        _silu_mul_kernel[(triton.cdiv(n, block),)](gate, up, out, n, BLOCK=block, num_warps=4, **pdl_launch(gate.device))
    return out


@triton.jit
def _silu_mul_bwd_kernel(g_ptr, u_ptr, dy_ptr, dg_ptr, du_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    keep = offs < n
    g = tl.load(g_ptr + offs, mask=keep, other=0.0)
    u = tl.load(u_ptr + offs, mask=keep, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=keep, other=0.0).to(tl.float32)
    g32 = g.to(tl.float32)
    sig = 1.0 / (1.0 + tl.exp(-g32))
    act = (g32 * sig).to(g.dtype, fp_downcast_rounding="rtne").to(tl.float32)  # the forward's rounded SiLU
    tl.store(dg_ptr + offs, (dy * u * sig * (1.0 + g32 * (1.0 - sig))).to(dg_ptr.dtype.element_ty), mask=keep)
    tl.store(du_ptr + offs, (dy * act).to(du_ptr.dtype.element_ty), mask=keep)


class _SiluMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: Tensor, up: Tensor) -> Tensor:
        gate, up = gate.contiguous(), up.contiguous()
        ctx.save_for_backward(gate, up)
        return silu_mul_triton(gate, up)

    @staticmethod
    def backward(ctx, dy: Tensor):
        gate, up = ctx.saved_tensors
        dy = dy.contiguous()
        dgate, dup = torch.empty_like(gate), torch.empty_like(up)
        n, block = gate.numel(), 1024
        if n:
            _silu_mul_bwd_kernel[(triton.cdiv(n, block),)](gate, up, dy, dgate, dup, n, BLOCK=block, num_warps=4)
        return dgate, dup


def silu_mul_train(gate: Tensor, up: Tensor) -> Tensor:
    """:func:`silu_mul_triton` with a backward."""
    return _SiluMul.apply(gate, up)
