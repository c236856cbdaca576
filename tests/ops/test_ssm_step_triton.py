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
@pytest.mark.parametrize("b,d,n,r", [(1, 64, 16, 4), (4, 130, 16, 100), (2, 33, 8, 16), (40, 130, 16, 20)])
def test_state_step(b, d, n, r, dtype, triton_device):
    """The fused step (Δ projection included) against dt_proj by F.linear and the reference
    update; 40 rows span three tiles of sequences."""
    from hymba.ops.ssm_step_triton import ssm_decode_step_triton

    if triton_device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's CPU interpreter gets tl.dot on bfloat16 wrong; runs on the GPU")
    dev = triton_device
    rand = lambda *s: torch.randn(*s, device=dev)  # noqa: E731
    proj = rand(b, 2 * d).to(dtype)
    u, z = rand(b, d).to(dtype), proj[:, d:]  # z strided like the fused projection's split
    dt_all = rand(b, r + 2 * n).to(dtype)
    dt, B, C = dt_all[:, :r], dt_all[:, r : r + n], dt_all[:, r + n :]  # strided like x_proj's split
    dt_weight = (rand(d, r) / r**0.5).to(dtype)
    A_log, D, bias = rand(d, n) * 0.5, rand(d), rand(d) * 0.5 - 1
    state = rand(b, d, n)
    ref_state = state.clone()
    got = ssm_decode_step_triton(state, u, dt, dt_weight, A_log, B, C, D, z, bias)
    delta = torch.nn.functional.linear(dt, dt_weight)
    want = selective_state_update(ref_state, u, delta, -torch.exp(A_log), B, C, D, z, bias, True)
    assert got.dtype == dtype
    # bf16: Δ is rounded to bf16 after sums in another order, so a few Δ may sit one rounding
    # step apart
    tol = _tol(dtype) if dtype == torch.float32 else dict(rtol=2e-2, atol=6e-2)
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(state, ref_state, **tol)
