"""RMSNorm: the fused Triton kernel against the reference, and the dispatch rules."""

from __future__ import annotations

import pytest
import torch

from hymba.ops.norm import rms_norm, rms_norm_parts, rms_norm_reference, silu_mul


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


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sizes", [(100, 16, 16), (4, 8, 8), (3, 1, 5)])
def test_triton_parts_match_reference(sizes, dtype, triton_device):
    from hymba.ops.norm_triton import rms_norm_parts_triton

    x = (torch.randn(3, 2, sum(sizes), device=triton_device) * 2).to(dtype)
    weights = tuple((torch.rand(s, device=triton_device) + 0.5).to(dtype) for s in sizes)
    got = rms_norm_parts_triton(x, sizes, weights, 1e-6)
    want = [rms_norm_reference(p, w, 1e-6) for p, w in zip(x.split(list(sizes), -1), weights)]
    tol = 1e-5 if dtype == torch.float32 else 2**-6
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_silu_mul_matches_reference(dtype, triton_device):
    from hymba.ops.norm_triton import silu_mul_triton

    g = (torch.randn(3, 1, 2500, device=triton_device) * 4).to(dtype)
    u = torch.randn(3, 1, 2500, device=triton_device).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 2**-6
    torch.testing.assert_close(silu_mul_triton(g, u), torch.nn.functional.silu(g) * u, rtol=tol, atol=tol)


def test_parts_and_gate_dispatch_on_cpu_are_the_references():
    x = torch.randn(2, 12)
    weights = (torch.rand(4), torch.rand(4), torch.rand(4))
    for got, part, w in zip(rms_norm_parts(x, (4, 4, 4), weights, 1e-6), x.split(4, -1), weights):
        torch.testing.assert_close(got, rms_norm_reference(part, w, 1e-6))
    g, u = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(silu_mul(g, u), torch.nn.functional.silu(g) * u)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                           (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("shape", [(3, 5, 64), (2, 1600), (1, 1, 40), (0, 16)])
def test_triton_add_rms_norm_matches_reference(shape, dtype, w_dtype, triton_device):
    from hymba.ops.norm import add_rms_norm_reference
    from hymba.ops.norm_triton import add_rms_norm_triton

    x = (torch.randn(shape, device=triton_device) * 3).to(dtype)
    delta = torch.randn(shape, device=triton_device).to(dtype)
    w = (torch.rand(shape[-1], device=triton_device) + 0.5).to(w_dtype)
    (total, normed), (want_total, want_normed) = add_rms_norm_triton(x, delta, w, 1e-6), add_rms_norm_reference(x, delta, w, 1e-6)
    assert total.dtype == want_total.dtype and normed.dtype == want_normed.dtype and normed.shape == shape
    tol = 1e-5 if dtype == torch.float32 else 2**-6
    torch.testing.assert_close(total, want_total, rtol=tol, atol=tol)
    torch.testing.assert_close(normed, want_normed, rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                           (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("shape", [(2, 3, 3200), (1, 1, 48), (0, 8)])
def test_triton_mean_of_rms_norms_matches_reference(shape, dtype, w_dtype, triton_device):
    from hymba.ops.norm import mean_of_rms_norms_reference
    from hymba.ops.norm_triton import mean_of_rms_norms_triton

    a = (torch.randn(shape, device=triton_device) * 5).to(dtype)
    b = (torch.randn(shape, device=triton_device) / 5).to(dtype)
    wa, wb = ((torch.rand(shape[-1], device=triton_device) + 0.5).to(w_dtype) for _ in range(2))
    got, want = mean_of_rms_norms_triton(a, b, wa, wb, 1e-6), mean_of_rms_norms_reference(a, b, wa, wb, 1e-6)
    assert got.dtype == want.dtype and got.shape == want.shape
    tol = 1e-5 if dtype == torch.float32 else 2**-6
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_fused_norms_keep_autograd_and_mixed_dtypes_on_the_references():
    from hymba.ops.norm import add_rms_norm, mean_of_rms_norms

    x, d = torch.randn(2, 8, requires_grad=True), torch.randn(2, 8, dtype=torch.bfloat16)
    w = torch.rand(8, requires_grad=True)
    total, normed = add_rms_norm(x, d, w, 1e-6)  # fp32 residual + bf16 update, as under autocast
    assert total.dtype == torch.float32
    normed.sum().backward()
    assert x.grad is not None and w.grad is not None
    a = torch.randn(3, 8, requires_grad=True)
    mean_of_rms_norms(a, torch.randn(3, 8), w, w * 2, 1e-6).sum().backward()
    assert a.grad is not None
