"""Rotary embedding: the Triton kernel against the reference."""

from __future__ import annotations

import pytest
import torch

from hymba import HymbaConfig
from hymba.model.layers import RotaryEmbedding
from hymba.ops.rotary import apply_rotary, apply_rotary_reference


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,h,length,d,per_row", [(1, 25, 1, 64, False), (3, 5, 37, 64, True), (2, 4, 130, 24, False)])
def test_triton_matches_reference(b, h, length, d, per_row, dtype, triton_device):
    from hymba.ops.rotary.triton import apply_rotary_triton

    dev = triton_device
    # heads split out of a (b, L, H·d) projection, as the attention branch does it
    x = torch.randn(b, length, h * d + 8, device=dev)[..., 8:].to(dtype).view(b, length, h, d).transpose(1, 2)
    angles = torch.rand(b if per_row else 1, 1, length, d // 2, device=dev) * 50
    angles = torch.cat([angles, angles], -1)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    got, want = apply_rotary_triton(x, cos, sin), apply_rotary_reference(x.float(), cos.float(), sin.float())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert got.dtype == dtype and got.shape == x.shape
    assert got.transpose(1, 2).is_contiguous()  # the projection's (b, L, H, d) order, not copied back
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)
    dense = apply_rotary_triton(x.contiguous(), cos, sin)
    assert dense.is_contiguous() and torch.equal(dense, got)


def test_rotation_keeps_norms_and_autograd_uses_the_reference():
    rope = RotaryEmbedding(HymbaConfig.from_preset("tiny"))
    cos, sin = rope(torch.arange(5), torch.float32)
    x = torch.randn(2, 3, 5, cos.shape[-1], requires_grad=True)
    y = apply_rotary(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))  # a rotation per pair of channels
    y.sum().backward()
    assert x.grad is not None


@pytest.mark.gpu
@pytest.mark.parametrize("x_dtype,table_dtype,out_dtype,tol", [
    (torch.float32, torch.float32, None, 1e-5),
    (torch.bfloat16, torch.float32, torch.bfloat16, 2e-2),  # autocast training: fp32 tables, bf16 heads
    (torch.bfloat16, torch.bfloat16, None, 2e-2),
])
def test_triton_backward_matches_reference(x_dtype, table_dtype, out_dtype, tol, triton_device):
    from hymba.ops.rotary.triton import apply_rotary_train

    b, h, length, d = 2, 3, 37, 24
    x = torch.randn(b, length, h * d, device=triton_device).to(x_dtype).view(b, length, h, d).transpose(1, 2)
    angles = torch.rand(1, 1, length, d // 2, device=triton_device) * 50
    angles = torch.cat([angles, angles], -1)
    cos, sin = angles.cos().to(table_dtype), angles.sin().to(table_dtype)
    fast_x = x.detach().clone().requires_grad_(True)
    exact_x = x.detach().double().requires_grad_(True)
    got = apply_rotary_train(fast_x, cos, sin, out_dtype)
    want = apply_rotary_reference(exact_x, cos.double(), sin.double())
    assert got.dtype == (out_dtype or torch.promote_types(x_dtype, table_dtype))
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    upstream = torch.randn(got.shape, device=triton_device)
    got.backward(upstream.to(got.dtype))
    want.backward(upstream.double())
    assert fast_x.grad.dtype == x_dtype
    torch.testing.assert_close(fast_x.grad.double(), exact_x.grad, rtol=tol, atol=tol)


def test_result_dtype_is_honoured_on_the_reference():
    cos, sin = RotaryEmbedding(HymbaConfig.from_preset("tiny"))(torch.arange(4), torch.float32)
    x = torch.randn(1, 2, 4, cos.shape[-1]).bfloat16()
    assert apply_rotary(x, cos, sin).dtype == torch.float32
    assert apply_rotary(x, cos, sin, torch.bfloat16).dtype == torch.bfloat16
