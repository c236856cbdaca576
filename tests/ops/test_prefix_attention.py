"""attention_with_prefix in low precision against a float64 evaluation of the same inputs."""

from __future__ import annotations

import math

import pytest
import torch

from hymba.ops import attention_with_prefix


def reference(q, pk, pv, k, v, mask):
    b, hq, _, d = q.shape
    g = hq // k.shape[1]
    keys = torch.cat([pk.expand(b, -1, -1, -1), k], 2).repeat_interleave(g, 1)
    values = torch.cat([pv.expand(b, -1, -1, -1), v], 2).repeat_interleave(g, 1)
    visible = torch.cat([mask.new_ones(*mask.shape[:3], pk.shape[2]), mask], -1)
    scores = (q @ keys.transpose(-1, -2) / math.sqrt(d)).masked_fill(~visible, float("-inf"))
    return scores.softmax(-1) @ values


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("prefix", [0, 7])
def test_matches_float64(dtype, prefix):
    torch.manual_seed(0)
    b, hq, hkv, lq, s, d, dv = 3, 6, 2, 2, 40, 16, 8
    q, k, v = torch.randn(b, hq, lq, d), torch.randn(b, hkv, s, d), torch.randn(b, hkv, s, dv)
    pk, pv = torch.randn(1, hkv, prefix, d), torch.randn(1, hkv, prefix, dv)
    mask = torch.rand(b, 1, lq, s) < 0.6
    mask[..., 0] = True
    args = [t.to(dtype) for t in (q, pk, pv, k, v)]
    out = attention_with_prefix(*args, mask)
    assert out.dtype == dtype
    expected = reference(*[t.double() for t in args], mask)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=tol)
