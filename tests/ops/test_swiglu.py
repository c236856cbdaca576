"""The SwiGLU middle SiLU(gate) · up: the Triton kernels (forward, backward) against the
reference, and the dispatch. (The fused gate-and-up products are the linear op's kernel:
tests/ops/test_linear.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hymba.ops.swiglu import silu_mul, swiglu
from hymba.ops.swiglu.reference import silu_mul_reference, swiglu_reference


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_silu_mul_matches_reference(dtype, triton_device):
    from hymba.ops.swiglu.triton import silu_mul_triton

    g = (torch.randn(3, 1, 2500, device=triton_device) * 4).to(dtype)
    u = torch.randn(3, 1, 2500, device=triton_device).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 2**-6
    torch.testing.assert_close(silu_mul_triton(g, u), silu_mul_reference(g, u), rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_triton_silu_mul_backward_matches_reference(dtype, tol, triton_device):
    """Values and gradients of the kernels against the reference in float64, for one random
    upstream gradient; each gradient in its input's dtype."""
    from hymba.ops.swiglu.triton import silu_mul_train

    g = (torch.randn(3, 7, 333, device=triton_device) * 4).to(dtype).requires_grad_(True)
    u = torch.randn(3, 7, 333, device=triton_device).to(dtype).requires_grad_(True)
    g64, u64 = (t.detach().double().requires_grad_(True) for t in (g, u))
    out, want = silu_mul_train(g, u), silu_mul_reference(g64, u64)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol * want.abs().max().item())
    upstream = torch.randn(out.shape, device=triton_device)
    out.backward(upstream.to(dtype))
    want.backward(upstream.double())
    for got, exact in ((g.grad, g64.grad), (u.grad, u64.grad)):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), exact, rtol=tol, atol=tol * exact.abs().max().item())


@pytest.mark.gpu
def test_dispatch_runs_the_backward_kernel_under_autograd(triton_device, monkeypatch):
    monkeypatch.setenv("HYMBA_TRITON", "force")
    x = torch.randn(4, 32, device=triton_device, requires_grad=True)
    assert "_SiluMul" in type(silu_mul(x, x * 3).grad_fn).__name__


def test_cpu_dispatch_is_the_reference():
    g, u = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(silu_mul(g, u), F.silu(g) * u)
    x, wg, wu = torch.randn(2, 8), torch.randn(6, 8), torch.randn(6, 8)
    torch.testing.assert_close(swiglu(x, wg, wu), swiglu_reference(x, wg, wu))
