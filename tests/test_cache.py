"""HybridCache: incremental decoding equals the full forward for every layer kind; bounded SWA
memory; the meta-token prefix is computed once per model."""

from __future__ import annotations

import pytest
import torch

from hymba import HymbaConfig, HymbaForCausalLM
from hymba.inference import HybridCache, meta_prefix

SMALL = dict(
    vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=5, num_attention_heads=4,
    num_key_value_heads=2, sliding_window=6, global_attn_idx=[0, 4], kv_reuse_group=[[1, 2, 3]],
    num_memory_tokens=4, torch_dtype="float32", max_position_embeddings=512,
    orig_max_position_embeddings=256,
)
VARIANTS = {
    "hybrid": {},
    "all-global": dict(sliding_window=None, kv_reuse_group=[]),
    "all-swa": dict(global_attn_idx=[]),
    "no-meta": dict(num_memory_tokens=0),
    "one-meta": dict(num_memory_tokens=1),  # fewer meta tokens than conv taps
    "no-kv-sharing": dict(kv_reuse_group=[]),
    "attention-only": dict(mixer_type="attention"),
    "ssm-only": dict(mixer_type="ssm", kv_reuse_group=[], global_attn_idx=[]),
    "window-1": dict(sliding_window=1),
}


def make_model(preset: str | None = None, scale: float = 0.3, **changes) -> HymbaForCausalLM:
    torch.manual_seed(0)
    config = HymbaConfig.from_preset(preset, **changes) if preset else HymbaConfig(**{**SMALL, **changes})
    model = HymbaForCausalLM(config).eval()
    with torch.no_grad():  # larger weights than the init so that every part matters
        for name, p in model.named_parameters():
            if "A_log" not in name and not name.endswith(".D"):
                p.add_(torch.randn_like(p) * scale)
    return model


def incremental_logits(model, ids: torch.Tensor, chunks: list[int], **options) -> torch.Tensor:
    """Logits for every position, feeding ``ids`` in chunks of the given sizes through a cache."""
    cache = HybridCache(model.config, ids.shape[0], ids.shape[1], model.dtype, **options)
    cache.reset(meta_prefix(model))
    out, start = [], 0
    with torch.no_grad():
        for size in chunks:
            out.append(model(ids[:, start : start + size], state=cache).logits)
            start += size
    return torch.cat(out, 1)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_token_by_token_equals_full_forward(variant):
    model = make_model(**VARIANTS[variant])
    n = 24  # far past window + meta tokens (10)
    ids = torch.randint(3, 97, (2, n), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids).logits
    chunkings = [[3] + [1] * (n - 3)]
    if variant == "hybrid":  # a prompt longer than the window, and multi-token continuations
        chunkings += [[1] * n, [13, 1, 1, 9]]
    for chunks in chunkings:
        torch.testing.assert_close(incremental_logits(model, ids, chunks), full, rtol=1e-4, atol=1e-4)
    static = incremental_logits(model, ids, chunkings[0], static_shapes=True)  # CUDA-graph friendly
    torch.testing.assert_close(static, full, rtol=1e-4, atol=1e-4)


def test_tiny_preset_decode_past_window():
    model = make_model("tiny", scale=0.05)  # window 64, 16 meta tokens, every layer kind
    n = 100  # decode steps cross the window (64) and window + meta tokens (80)
    ids = torch.randint(3, 2048, (1, n), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids).logits
    torch.testing.assert_close(incremental_logits(model, ids, [70] + [1] * (n - 70)), full, rtol=0, atol=1e-4)


def test_reference_decode_sees_one_key_fewer():
    """NVIDIA's cached decode == a no-cache forward with window - 1 once past the window."""
    model = make_model(global_attn_idx=[])
    ids = torch.randint(3, 97, (1, 24), generator=torch.Generator().manual_seed(3))
    ref = incremental_logits(model, ids, [1] * 24, swa_decode="reference")
    narrow = HymbaForCausalLM(model.config.replace(sliding_window=5)).eval()
    narrow.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(ref, narrow(ids).logits, rtol=0, atol=1e-4)
        assert (ref - model(ids).logits).abs().max() > 1e-2  # the trained window differs


def test_swa_memory_does_not_grow_with_length():
    config = HymbaConfig.from_preset("tiny")
    sizes = {n: HybridCache(config, 2, n, dtype=torch.float16, device="meta").nbytes() for n in (100, 1000, 4000)}
    for part in ("swa_kv", "swa_positions", "ssm_state", "conv_state", "meta_kv"):
        assert sizes[100][part] == sizes[4000][part] > 0
    kv_per_token = 2 * config.num_key_value_heads * (config.qk_head_dim + config.value_head_dim)
    globals_ = sum(1 for s in config.layer_plan() if s.computes_kv and s.window is None)
    assert sizes[4000]["global_kv"] - sizes[1000]["global_kv"] == 2 * 3000 * kv_per_token * globals_
    # the ring: window + 1 slots per sliding-window producer and row
    producers = sum(1 for s in config.layer_plan() if s.computes_kv and s.window is not None)
    assert sizes[100]["swa_kv"] == 2 * (config.sliding_window + 1) * kv_per_token * producers


def test_decode_writes_in_place():
    model = make_model()
    cache = HybridCache(model.config, 1, 40).reset(meta_prefix(model))
    storage = {id(t): t.data_ptr() for t in [*cache.k.values(), *cache.v.values(), *cache.conv.values(), *cache.ssm.values()]}
    ids = torch.randint(3, 97, (1, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        model(ids[:, :10], state=cache)
        for t in range(10, 30):
            model(ids[:, t : t + 1], state=cache)
    after = {id(t): t.data_ptr() for t in [*cache.k.values(), *cache.v.values(), *cache.conv.values(), *cache.ssm.values()]}
    assert after == storage
    assert cache.lengths.tolist() == [model.config.num_memory_tokens + 30]


def test_meta_prefix_is_computed_once_per_model(monkeypatch):
    model = make_model()
    calls = []
    original = model.model.run_layers
    monkeypatch.setattr(model.model, "run_layers", lambda h, layout, hidden=None: calls.append(h.shape[1]) or original(h, layout, hidden))
    ids = torch.randint(3, 97, (1, 5))
    model.generate(ids, max_new_tokens=3)
    model.generate(ids, max_new_tokens=3)
    m = model.config.num_memory_tokens
    assert calls.count(m) == 1 and meta_prefix(model) is meta_prefix(model)
    # the meta K/V are read in place (batch 1), not copied into each request's cache
    cache = HybridCache(model.config, 3, 10).reset(meta_prefix(model))
    assert cache.meta_k[0].data_ptr() == meta_prefix(model).k[0].data_ptr()
    # changing a weight invalidates the prefix
    old = meta_prefix(model)
    with torch.no_grad():
        model.model.memory_tokens.add_(1.0)
    assert meta_prefix(model) is not old


def test_cache_capacity_error():
    model = make_model()
    cache = HybridCache(model.config, 1, 4).reset(meta_prefix(model))
    with pytest.raises(ValueError, match="at most 4 tokens"):
        model(torch.ones(1, 5, dtype=torch.long), state=cache)


def test_copy_rows_moves_whole_sequences_between_caches():
    """Rows copied into another cache (of another batch size) continue exactly as they would have
    where they were: K/V of every kind, ring positions, conv and SSM state, lengths."""
    model = make_model()
    prefix = meta_prefix(model)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 97, (3, 11), generator=g)  # longer than the window (6)
    nxt = torch.randint(3, 97, (3, 4), generator=g)
    with torch.no_grad():
        source = HybridCache(model.config, 3, 20).reset(prefix)
        model(ids, state=source)
        target = HybridCache(model.config, 4, 20).reset(prefix)
        target.copy_rows(source, torch.tensor([2, 0]), torch.tensor([1, 3]), ids.shape[1])
        assert target.lengths.tolist() == [4, 4 + 11, 4, 4 + 11]
        want = model(nxt, state=source).logits
        got = model(nxt[[1, 2, 1, 0]], state=target).logits  # rows 0 and 2 are fresh: ignore them
    torch.testing.assert_close(got[[3, 1]], want[[0, 2]], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="same model"):
        HybridCache(model.config, 2, 30).copy_rows(source, torch.tensor([0]), torch.tensor([0]), 11)
