"""The one-step SSM update and the prefix attention agree with their references."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hymba.ops import (
    attention_with_prefix,
    sdpa_attention,
    selective_scan_reference,
    selective_state_update,
)


def test_state_update_steps_equal_the_scan():
    torch.manual_seed(0)
    b, L, c, n = 2, 7, 5, 4
    u, delta, z = torch.randn(b, L, c), torch.randn(b, L, c), torch.randn(b, L, c)
    A, B, C = -torch.rand(c, n) - 0.1, torch.randn(b, L, n), torch.randn(b, L, n)
    D, bias = torch.randn(c), torch.randn(c)
    init = torch.randn(b, c, n)
    y, final = selective_scan_reference(u, delta, A, B, C, D, z, bias, True, initial_state=init)
    state = init.clone()
    ptr = state.data_ptr()
    steps = [selective_state_update(state, u[:, t], delta[:, t], A, B[:, t], C[:, t], D, z[:, t], bias)
             for t in range(L)]
    torch.testing.assert_close(torch.stack(steps, 1), y)
    torch.testing.assert_close(state, final)
    assert state.data_ptr() == ptr  # updated in place


def test_state_update_low_precision_state_and_no_gate():
    torch.manual_seed(1)
    u, delta = torch.randn(1, 3, dtype=torch.bfloat16), torch.randn(1, 3, dtype=torch.bfloat16)
    A, B, C = -torch.rand(3, 2), torch.randn(1, 2), torch.randn(1, 2)
    state = torch.randn(1, 3, 2, dtype=torch.bfloat16)
    expect_state = torch.exp(F.softplus(delta.float())[..., None] * A) * state.float() + (
        F.softplus(delta.float()) * u.float())[..., None] * B[:, None]
    y = selective_state_update(state, u, delta, A, B, C)
    assert y.dtype == torch.bfloat16 and state.dtype == torch.bfloat16
    torch.testing.assert_close(state.float(), expect_state, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(y.float(), (expect_state * C[:, None]).sum(-1), rtol=1e-2, atol=1e-2)


def test_prefix_attention_equals_masked_attention_over_the_concatenation():
    torch.manual_seed(2)
    b, hq, hkv, m, s, d, dv = 3, 4, 2, 5, 9, 8, 16
    q = torch.randn(b, hq, 1, d)
    pk, pv = torch.randn(1, hkv, m, d), torch.randn(1, hkv, m, dv)
    k, v = torch.randn(b, hkv, s, d), torch.randn(b, hkv, s, dv)
    mask = torch.rand(b, 1, 1, s) > 0.4
    mask[..., 0] = True
    out = attention_with_prefix(q, pk, pv, k, v, mask)
    full_mask = torch.cat([torch.ones(b, 1, 1, m, dtype=torch.bool), mask], -1)
    ref = sdpa_attention(q, torch.cat([pk.expand(b, -1, -1, -1), k], 2), torch.cat([pv.expand(b, -1, -1, -1), v], 2), full_mask)
    torch.testing.assert_close(out, ref)
    # no prefix at all (a model without meta tokens)
    out = attention_with_prefix(q, pk[:, :, :0], pv[:, :, :0], k, v, mask)
    torch.testing.assert_close(out, sdpa_attention(q, k, v, mask))
