"""FlexAttention's block mask (run eagerly on CPU) against the SDPA path's boolean mask, including
queries that are the last keys after a prefix (a prompt after cached meta tokens)."""

from __future__ import annotations

import pytest
import torch

from hymba.ops.attention import attention_mask, sdpa_attention

flex = pytest.importorskip("hymba.ops.attention.flex", reason="this torch has no FlexAttention")


def _eager(monkeypatch) -> list[tuple[bool, bool]]:
    """FlexAttention run eagerly (no compiler on CPU), through the same wrappers; returns the list
    of wrapper keys (exact shape, output in (b, L, H, d) order) the calls use."""
    from torch.nn.attention.flex_attention import flex_attention

    used = []

    def wrapper(key):
        def run(*args, **kwargs):
            used.append(key)
            return (flex._heads_last if key[1] else flex_attention)(*args, **kwargs)
        return run

    monkeypatch.setattr(flex, "_compiled", {(s, h): wrapper((s, h)) for s in (False, True) for h in (False, True)})
    return used


@pytest.mark.parametrize(
    "lq, lk, window, num_meta, offset",
    [(40, 40, None, 0, 0), (40, 40, 8, 4, 0), (30, 38, 8, 8, 0), (30, 38, None, 8, 0), (20, 50, 6, 8, 3)],
)
def test_block_mask_matches_the_boolean_mask(monkeypatch, lq, lk, window, num_meta, offset):
    _eager(monkeypatch)
    g = torch.Generator().manual_seed(lq + lk)
    q, k, v = (torch.randn(1, h, n, d, generator=g) for h, n, d in ((4, lq, 16), (2, lk, 16), (2, lk, 32)))
    out = flex.flex_attention_swa(q, k, v, window, num_meta, offset)
    k_pos = torch.arange(offset, offset + lk)
    q_pos = k_pos[lk - lq :]
    want = sdpa_attention(q, k, v, attention_mask(q_pos, k_pos, window, num_meta))
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads, length", [(4, 24), (1, 24), (4, 1)])
def test_queries_split_from_a_projection_keep_their_layout(monkeypatch, heads, length):
    """Queries that are a (b, L, H, d) view run the wrapper that returns the output in that
    memory order (so it transposes back to (b, L, H·d) without a copy, and its gradient arrives
    in the order the compiled backward expects), with the values of contiguous queries. One head
    or one position: both orders are the same memory (and either wrapper serves both calls)."""
    used = _eager(monkeypatch)
    g = torch.Generator().manual_seed(5)
    k, v = (torch.randn(1, 1, length, d, generator=g) for d in (16, 32))
    split = torch.randn(1, length, heads, 16, generator=g).transpose(1, 2)  # as split from a projection
    out = flex.flex_attention_swa(split, k, v, 8, 4)
    assert out.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(out, flex.flex_attention_swa(split.contiguous(), k, v, 8, 4), rtol=1e-6, atol=1e-6)
    want = {(4, 24): [(False, True), (False, False)], (1, 24): [(False, False)] * 2, (4, 1): [(False, True)] * 2}
    assert used == want[heads, length]


def test_more_queries_than_keys_is_an_error():
    q, k = torch.randn(1, 2, 9, 8), torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match="last keys"):
        flex.flex_attention_swa(q, k, k, None, 0)


def test_calls_that_autograd_records_get_exact_shape_compilations(monkeypatch):
    monkeypatch.setattr(flex, "_static_shapes", set())
    monkeypatch.setattr(flex, "STATIC_SHAPES", 2)
    q, k = torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8, 4)
    assert not flex._exact_shape(q, k, k)  # no autograd: the dynamic-shape compilation
    q.requires_grad_(True)
    with torch.no_grad():
        assert not flex._exact_shape(q, k, k)
    assert flex._exact_shape(q, k, k)
    other = torch.randn(1, 2, 9, 4, requires_grad=True)
    assert flex._exact_shape(other, other, other)
    third = torch.randn(1, 2, 10, 4, requires_grad=True)
    assert not flex._exact_shape(third, third, third)  # past STATIC_SHAPES shapes
    assert flex._exact_shape(q, k, k)  # the first shapes keep theirs
