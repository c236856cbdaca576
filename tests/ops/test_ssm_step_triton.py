"""The SSM decode-step kernels (conv update, state update) against their PyTorch references, on
the GPU or under Triton's CPU interpreter."""

from __future__ import annotations

import pytest
import torch

from hymba.ops.conv import causal_conv1d_update_reference
from hymba.ops.ssm_step import selective_state_update

pytestmark = pytest.mark.gpu


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,d,k,bias", [(1, 64, 4, True), (3, 100, 4, False), (2, 7, 3, True)])
def test_conv_step(b, d, k, bias, dtype, triton_device):
    from hymba.ops.ssm_step_triton import causal_conv1d_update_triton

    dev = triton_device
    wide = torch.randn(b, 3, d, device=dev).to(dtype)
    x = wide[:, 1]  # strided, as the split of the fused projection gives it
    weight = torch.randn(d, k, device=dev).to(dtype)
    b_ = torch.randn(d, device=dev).to(dtype) if bias else None
    state = torch.randn(b, d, k, device=dev).to(dtype)
    ref_state = state.clone()
    for _ in range(3):  # several steps: the shift must move every slot
        got = causal_conv1d_update_triton(x, state, weight, b_)
        want = causal_conv1d_update_reference(x, ref_state, weight, b_)
        torch.testing.assert_close(got, want, **_tol(dtype))
        torch.testing.assert_close(state, ref_state)
        x = torch.randn(b, d, device=dev).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,d,n", [(1, 64, 16), (4, 130, 16), (2, 33, 8)])
def test_state_step(b, d, n, dtype, triton_device):
    from hymba.ops.ssm_step_triton import ssm_decode_step_triton

    dev = triton_device
    r = lambda *s: torch.randn(*s, device=dev)  # noqa: E731
    proj = r(b, 2 * d).to(dtype)
    u, z = r(b, d).to(dtype), proj[:, d:]  # z strided like the fused projection's split
    delta = (r(b, d) - 1).to(dtype)
    bc = r(b, 2 * n).to(dtype)
    B, C = bc[:, :n], bc[:, n:]
    A_log, D, bias = r(d, n) * 0.5, r(d), r(d) * 0.5 - 1
    state = r(b, d, n)
    ref_state = state.clone()
    got = ssm_decode_step_triton(state, u, delta, A_log, B, C, D, z, bias)
    want = selective_state_update(ref_state, u, delta, -torch.exp(A_log), B, C, D, z, bias, True)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, **_tol(dtype))
    torch.testing.assert_close(state, ref_state, rtol=1e-5, atol=1e-5)
