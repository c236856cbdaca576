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
    from hymba.ops.rotary_triton import apply_rotary_triton

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
