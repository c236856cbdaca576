"""RMSNorm: the fused Triton kernel against the reference, and the dispatch rules."""

from __future__ import annotations

import pytest
import torch

from hymba.ops.norm import rms_norm, rms_norm_reference


@pytest.mark.gpu
@pytest.mark.parametrize("x_dtype,w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                             (torch.bfloat16, torch.float32), (torch.float16, torch.float16)])
@pytest.mark.parametrize("shape", [(3, 5, 64), (7, 3200), (2, 1, 16), (1, 1600), (0, 24)])
def test_triton_matches_reference(shape, x_dtype, w_dtype, triton_device):
    from hymba.ops.norm_triton import rms_norm_triton

    device = triton_device
    x = (torch.randn(shape, device=device) * 3).to(x_dtype)
    w = (torch.rand(shape[-1], device=device) + 0.5).to(w_dtype)
    got, want = rms_norm_triton(x, w, 1e-6), rms_norm_reference(x, w, 1e-6)
    assert got.dtype == want.dtype and got.shape == want.shape
    # Same roundings; rsqrt's last bit and the summation order may differ, and Triton's CPU
    # interpreter rounds to bfloat16 by truncation: allow two bf16 steps where x is bf16.
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2**-6}[x_dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.gpu
def test_triton_strided_rows(triton_device):
    from hymba.ops.norm_triton import rms_norm_triton

    device = triton_device
    x = torch.randn(4, 10, 48, device=device)[:, ::2, :40]  # rows not contiguous with each other
    w = torch.rand(40, device=device)
    torch.testing.assert_close(rms_norm_triton(x, w, 1e-5), rms_norm_reference(x, w, 1e-5))


def test_dispatch_keeps_autograd_on_the_reference():
    x = torch.randn(2, 3, 8, requires_grad=True)
    w = torch.rand(8, requires_grad=True)
    y = rms_norm(x, w, 1e-6)
    y.sum().backward()
    assert x.grad is not None and w.grad is not None
    torch.testing.assert_close(y, rms_norm_reference(x, w, 1e-6))
