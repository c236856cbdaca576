"""Storing a decode step's K/V: the fused kernel against the reference scatters."""

from __future__ import annotations

import pytest
import torch

from hymba.ops.kv_store import store_kv_step, store_kv_step_reference
from hymba.ops.rotary import apply_rotary_reference


def stores(b, hkv, slots, dqk, dv, dtype, device):
    return (torch.randn(b, hkv, slots, dqk, device=device).to(dtype),
            torch.randn(b, hkv, slots, dv, device=device).to(dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("ring", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_matches_reference(ring, dtype, triton_device):
    from hymba.ops.kv_store.triton import store_kv_step_triton

    device, b, hkv, slots, m = triton_device, 3, 5, 12, 4
    ks, vs = stores(b, hkv, slots, 64, 128, dtype, device)
    # new K/V as views of a fused projection, like the attention branch hands them over
    fused = torch.randn(b, 1, hkv * (64 + 128), device=device).to(dtype)
    k = fused[..., : hkv * 64].view(b, 1, hkv, 64).transpose(1, 2)
    v = fused[..., hkv * 64:].view(b, 1, hkv, 128).transpose(1, 2)
    pos = torch.tensor([[m], [m + 7], [m + 30]], device=device)  # slot 0, 7, and a wrapped ring slot
    if not ring:
        pos = pos.clamp(max=m + slots - 1)
    rp = torch.full((b, slots), -1, device=device, dtype=pos.dtype) if ring else None
    want = [t.clone() for t in (ks, vs)] + ([rp.clone()] if ring else [])
    store_kv_step_reference(want[0], want[1], k, v, pos, m, want[2] if ring else None)
    store_kv_step_triton(ks, vs, k, v, pos, m, rp)
    torch.testing.assert_close(ks, want[0], rtol=0, atol=0)
    torch.testing.assert_close(vs, want[1], rtol=0, atol=0)
    if ring:
        assert rp.equal(want[2]) and int(rp[2, 30 % slots]) == m + 30


@pytest.mark.gpu
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_rotates_the_keys_it_stores(per_row, dtype, triton_device):
    from hymba.ops.kv_store.triton import store_kv_step_triton

    device, b, hkv, slots, m, d = triton_device, 3, 2, 6, 4, 16
    ks, vs = stores(b, hkv, slots, d, 8, dtype, device)
    k, v = torch.randn(b, hkv, 1, d, device=device).to(dtype), torch.randn(b, hkv, 1, 8, device=device).to(dtype)
    angles = torch.rand(b if per_row else 1, 1, 1, d // 2, device=device) * 40
    cos, sin = (f(torch.cat([angles, angles], -1)).to(dtype) for f in (torch.cos, torch.sin))
    pos = torch.tensor([[m + 1], [m + 3], [m + 5]], device=device)
    want_k = ks.clone()
    rotated = apply_rotary_reference(k.float(), cos.float(), sin.float())
    store_kv_step_reference(want_k, vs.clone(), rotated, v, pos, m)
    store_kv_step_triton(ks, vs, k, v, pos, m, None, (cos, sin))
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(ks.float(), want_k.float(), rtol=tol, atol=tol)


def test_reference_writes_the_slots_of_the_positions():
    ks, vs = stores(2, 1, 4, 2, 3, torch.float32, "cpu")
    k, v = torch.ones(2, 1, 1, 2), torch.full((2, 1, 1, 3), 2.0)
    ring = torch.full((2, 4), -1)
    store_kv_step(ks, vs, k, v, torch.tensor([[5], [10]]), 1, ring)
    assert ring[0, 0] == 5 and ring[1, 1] == 10 and (ring[0, 1:] == -1).all()
    assert (ks[0, 0, 0] == 1).all() and (vs[1, 0, 1] == 2).all()
