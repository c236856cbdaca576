"""Decode attention: the Triton kernel against the reference (mask + attention_with_prefix), for
ring-buffer and linear caches, with and without a prefix, one or several key splits."""

from __future__ import annotations

import pytest
import torch

from hymba.ops.decode_attention import DecodeKeys, decode_attention
from hymba.ops.decode_attention.reference import attention_with_prefix
from hymba.ops.rotary import apply_rotary_reference


def _case(dev, dtype, b, hq, hkv, dqk, dv, P, S, ring, limit, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dev, dtype)  # noqa: E731
    q, pk, pv = r(b, hq, 1, dqk), r(1, hkv, P, dqk), r(1, hkv, P, dv)
    k, v = r(b, hkv, S, dqk), r(b, hkv, S, dv)
    M = 8
    if ring:
        # from a ring still filling (pos < M + S) to one wrapped around a few times
        pos = torch.randint(M, M + 3 * S, (b, 1), generator=g)
        pos[0] = M + S // 2
        # slot s holds the newest position p <= pos with (p - M) % S == s, as the cache's ring
        slot_pos = pos - (pos - M - torch.arange(S)[None]) % S
        slot_pos[slot_pos < M] = -1  # not written yet
        slot_pos[0, : S // 3] = -1  # emptied (a restarted row, say)
        keys = DecodeKeys(pos.to(dev), slot_pos.to(dev), M, limit)
    else:
        pos = torch.randint(M, M + S, (b, 1), generator=g)
        keys = DecodeKeys(pos.to(dev), None, M, limit)
    return q, pk, pv, k, v, keys


CASES = [  # b, hq, hkv, dqk, dv, P, S, ring, limit
    (1, 25, 5, 64, 128, 16, 200, True, 150),  # 1.5B heads, a ring with a window
    (3, 4, 2, 32, 64, 8, 300, False, None),  # tiny heads, a linear (global) store
    (2, 4, 2, 32, 64, 0, 70, True, 64),  # no prefix
    (130, 8, 1, 16, 16, 5, 65, False, None),  # many rows: no split
    (1, 6, 3, 24, 40, 3, 1100, False, None),  # odd head dims, many splits
    (150, 4, 2, 16, 16, 4, 100, True, 90),  # many rows on a ring: the crowded-ring knobs
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_triton_matches_reference(case, dtype, triton_device):
    from hymba.ops.decode_attention.triton import decode_attention_triton

    if triton_device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's CPU interpreter gets tl.dot on bfloat16 wrong; runs on the GPU")
    q, pk, pv, k, v, keys = _case(triton_device, dtype, *case)
    got = decode_attention_triton(q, pk, pv, k, v, keys)
    want = attention_with_prefix(q.double(), pk.double(), pv.double(), k.double(), v.double(), keys.mask(k.shape[2]))
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("case", [CASES[0], CASES[1]])
def test_triton_rotates_the_query(case, per_row, triton_device):
    from hymba.ops.decode_attention.triton import decode_attention_triton

    q, pk, pv, k, v, keys = _case(triton_device, torch.float32, *case)
    b, d = q.shape[0], q.shape[-1]
    angles = torch.rand(b if per_row else 1, 1, 1, d // 2, device=triton_device) * 40
    cos, sin = (f(torch.cat([angles, angles], -1)) for f in (torch.cos, torch.sin))
    got = decode_attention_triton(q, pk, pv, k, v, keys, (cos, sin))
    rotated = apply_rotary_reference(q.double(), cos.double(), sin.double())
    want = attention_with_prefix(rotated, pk.double(), pv.double(), k.double(), v.double(), keys.mask(k.shape[2]))
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="cos/sin"):
        decode_attention_triton(q, pk, pv, k, v, keys, (cos[..., :-2], sin[..., :-2]))


def test_reference_mask_semantics():
    pos = torch.tensor([[10], [12]])
    ring = torch.tensor([[8, 9, 10, -1], [12, 9, 10, 11]])
    mask = DecodeKeys(pos, ring, 8, limit=2).mask(4)[:, 0, 0]
    assert mask.tolist() == [[True, True, True, False], [True, False, True, True]]
    linear = DecodeKeys(pos, None, 8).mask(6)[:, 0, 0]  # slot s holds position 8 + s
    assert linear.tolist() == [[True, True, True, False, False, False], [True] * 5 + [False]]


def test_dispatch_on_cpu_is_the_reference():
    q, pk, pv, k, v, keys = _case("cpu", torch.float32, *CASES[1])
    torch.testing.assert_close(decode_attention(q, pk, pv, k, v, keys),
                               attention_with_prefix(q, pk, pv, k, v, keys.mask(k.shape[2])))
