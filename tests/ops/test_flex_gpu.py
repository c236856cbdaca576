"""FlexAttention (CUDA) computes what the SDPA path computes for Hymba's masks."""

from __future__ import annotations

import pytest
import torch

from hymba.ops.attention import attention, attention_mask, sdpa_attention
from hymba.ops.attention.flex import flex_attention_swa

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def qkv(b, hq, hkv, L, dqk, dv, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda").to(dtype)  # noqa: E731
    return r(b, hq, L, dqk), r(b, hkv, L, dqk), r(b, hkv, L, dv)


def sdpa_reference(q, k, v, window, num_meta, offset):
    pos = torch.arange(q.shape[2], device=q.device) + offset
    mask = attention_mask(pos, pos, window, num_meta)
    return sdpa_attention(q.float(), k.float(), v.float(), mask)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize(
    "L, window, num_meta, offset",
    [(128, None, 0, 0), (300, 64, 8, 0), (512, 128, 128, 0), (200, 16, 8, 40), (1100, None, 16, 0)],
)
@pytest.mark.parametrize("hq, hkv", [(4, 4), (8, 2)])
def test_flex_matches_sdpa(dtype, tol, L, window, num_meta, offset, hq, hkv):
    torch.backends.cuda.matmul.allow_tf32 = False
    q, k, v = qkv(2, hq, hkv, L, 32, 64, dtype, seed=L + hq)  # value head dim = 2 × qk head dim
    out = flex_attention_swa(q, k, v, window, num_meta, offset)
    ref = sdpa_reference(q, k, v, window, num_meta, offset)
    assert out.shape == ref.shape and out.dtype == dtype
    err = ((out.float() - ref).norm() / ref.norm()).item()
    assert err < tol, f"relative error {err:.2e}"


def test_tuned_tiles_on_hymba_heads():
    """Hymba-1.5B's heads (25 over 5, d_qk 64, d_v 128) in bf16: the shape with measured tiles."""
    from hymba.ops.attention.flex import kernel_options

    q, k, v = qkv(1, 25, 5, 300, 64, 128, torch.bfloat16, seed=3)
    out = flex_attention_swa(q, k, v, 128, 16)
    ref = sdpa_reference(q, k, v, 128, 16, 0)
    assert ((out.float() - ref).norm() / ref.norm()).item() < 2e-2
    if torch.cuda.get_device_capability() == (9, 0):
        assert kernel_options(q, v)  # the tuned tiles were passed


@pytest.mark.parametrize("split", [False, True])  # True: q a (b, L, H, d) view, as split from a projection
@pytest.mark.parametrize("L", [256, 200])  # 200: a partial last block
def test_flex_gradients_match_sdpa(L, split):
    q, k, v = qkv(1, 8, 2, L, 32, 64, torch.float32, seed=1)
    grads = []
    for fn in (lambda *x: flex_attention_swa(*x, 64, 8), lambda *x: sdpa_reference(*x, 64, 8, 0)):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        rows = q.transpose(1, 2).contiguous().requires_grad_(True)
        out = fn(rows.transpose(1, 2) if split else leaves[0], *leaves[1:])
        # the gradient arrives as the model's (b, L, H·d) rows give it back
        out.transpose(1, 2).reshape(1, L, -1).square().sum().backward()
        grads.append([rows.grad.transpose(1, 2) if split else leaves[0].grad, leaves[1].grad, leaves[2].grad])
    for a, b in zip(*grads):
        assert ((a - b).norm() / b.norm()).item() < 1e-4


def test_lengths_share_one_compilation_and_the_query_layout():
    def heads(L: int, h: int, d: int, seed: int) -> torch.Tensor:
        # (b, L, h·d) split into heads, as the attention branch hands them over: strided views
        g = torch.Generator(device="cuda").manual_seed(seed)
        return torch.randn(1, L, h * d, generator=g, device="cuda").bfloat16().view(1, L, h, d).transpose(1, 2)

    def inputs(L: int):
        return heads(L, 4, 32, 1), heads(L, 2, 32, 2), heads(L, 2, 64, 3)

    flex_attention_swa(*inputs(200), 48, 4)  # compiled for this length
    # a second length and block count (of 128 positions): compiled for dynamic lengths and counts
    flex_attention_swa(*inputs(300), 48, 4)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for L in (131, 256, 229, 1000):
            out = flex_attention_swa(*inputs(L), 48, 4)
            ref = sdpa_reference(*inputs(L), 48, 4, 0)
            assert ((out.float() - ref).norm() / ref.norm()).item() < 2e-2
            assert out.transpose(1, 2).is_contiguous()  # (b, L, H, d_v) in memory, as q


def test_attention_dispatches_to_flex(monkeypatch):
    q, k, v = qkv(1, 4, 2, 200, 32, 64, torch.float32, seed=2)
    pos = torch.arange(200, device="cuda")
    out = attention(q, k, v, pos, pos, 32, 8)
    monkeypatch.setenv("HYMBA_ATTN_IMPL", "sdpa")
    ref = attention(q, k, v, pos, pos, 32, 8)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_training_calls_run_exact_shape_kernels_after_dynamic_ones(monkeypatch):
    from hymba.ops.attention import flex

    monkeypatch.setattr(flex, "_static_shapes", set())
    picked = []
    real = flex._flex

    def spy(static: bool = False, heads_last: bool = False):
        picked.append(static)
        return real(static, heads_last)

    monkeypatch.setattr(flex, "_flex", spy)
    with torch.no_grad():  # two lengths: inference now has its dynamic-length compilation
        for L in (150, 170):
            flex_attention_swa(*qkv(1, 4, 2, L, 32, 64, torch.bfloat16, seed=L), 48, 4)
    q, k, v = (t.requires_grad_(True) for t in qkv(1, 4, 2, 190, 32, 64, torch.float32, seed=4))
    flex_attention_swa(q, k, v, 48, 4).square().sum().backward()
    assert picked == [False, False, True]
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    sdpa_reference(*leaves, 48, 4, 0).square().sum().backward()
    for a, b in zip((q, k, v), leaves):
        assert ((a.grad - b.grad).norm() / b.grad.norm()).item() < 1e-4
