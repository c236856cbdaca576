"""Pieced prefill (hymba.inference.prefill): by rows and by spans of columns, it stores the same
state and gives the same logits as one pass, for padded batches, prompts longer than the window
and than one piece, and every layer kind."""

from __future__ import annotations

import pytest
import torch
from test_cache import VARIANTS, make_model
from test_generation import left_pad

from hymba import InputError
from hymba.inference import HybridCache, meta_prefix, prefill
from hymba.inference.generation import pack_prompts
from hymba.inference.prefill import plan_pieces

PROMPT_LENGTHS = (5, 23, 1, 17)  # longer than window + meta tokens (10) and shorter than both


def _prompts(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(11)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


def _prefilled(model, ids, mask, chunk_tokens):
    packed, counts = pack_prompts(model, ids, mask)
    cache = HybridCache(model.config, ids.shape[0], ids.shape[1] + 4, model.dtype).reset(meta_prefix(model))
    with torch.no_grad():
        logits = prefill(model, cache, packed, counts, chunk_tokens)
    return cache, logits


def test_plan_pieces_bounds_every_piece():
    counts = [5, 23, 1, 17, 8]
    for budget in (1, 4, 7, 23, 30, 1000):
        pieces = plan_pieces(counts, budget)
        rows = [r for start, stop, _ in pieces for r in range(start, stop)]
        assert rows == list(range(len(counts)))
        for start, stop, spans in pieces:
            longest = max(counts[start:stop])
            assert spans[0][0] == 0 and spans[-1][1] == longest
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            assert all((stop - start) * (e - s) <= max(budget, e - s) for s, e in spans)
            if stop - start > 1:
                assert (stop - start) * longest <= budget
    assert plan_pieces(counts, 1000) == [(0, 5, [(0, 23)])]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pieced_prefill_equals_one_pass(variant):
    model = make_model(**VARIANTS[variant])
    ids, mask = left_pad(_prompts(97), pad=7)
    one_cache, one = _prefilled(model, ids, mask, chunk_tokens=10_000)
    # one row at a time; rows in spans of 4 (prompts longer than one piece); 2 rows x 3 columns
    for budget in (23, 4, 6):
        cache, logits = _prefilled(model, ids, mask, chunk_tokens=budget)
        torch.testing.assert_close(logits, one, rtol=1e-4, atol=1e-4)
        assert cache.extent == one_cache.extent == max(PROMPT_LENGTHS)
        assert torch.equal(cache.lengths, one_cache.lengths)
        for name in ("conv", "ssm"):
            for i, t in getattr(one_cache, name).items():
                torch.testing.assert_close(getattr(cache, name)[i], t, rtol=1e-4, atol=1e-4)
        for slot, pos in one_cache.ring_pos.items():
            assert torch.equal(cache.ring_pos[slot], pos)


@pytest.mark.parametrize("variant", ["hybrid", "ssm-only", "attention-only"])
def test_generate_with_small_pieces_gives_the_same_tokens(variant):
    model = make_model(**VARIANTS[variant])
    ids, mask = left_pad(_prompts(97), pad=7)
    whole = model.generate(ids, mask, max_new_tokens=12, eos_token_id=[], output_logits=True)
    for budget in (3, 17):
        pieced = model.generate(ids, mask, max_new_tokens=12, eos_token_id=[], output_logits=True,
                                prefill_chunk_tokens=budget)
        assert torch.equal(pieced.sequences, whole.sequences)
        torch.testing.assert_close(pieced.logits, whole.logits, rtol=1e-4, atol=1e-4)


def test_tiny_preset_long_prompt_in_spans():
    """A prompt well past the window (64) + meta tokens (16), in spans shorter than the window."""
    model = make_model("tiny", scale=0.05)
    ids = torch.randint(3, 2048, (2, 150), generator=torch.Generator().manual_seed(5))
    whole = model.generate(ids, max_new_tokens=6, eos_token_id=[], output_logits=True)
    pieced = model.generate(ids, max_new_tokens=6, eos_token_id=[], output_logits=True, prefill_chunk_tokens=50)
    assert torch.equal(pieced.sequences, whole.sequences)
    torch.testing.assert_close(pieced.logits, whole.logits, rtol=1e-4, atol=1e-4)


def test_bad_piece_size_is_one_clear_error():
    model = make_model()
    for bad in (0, -5, 2.5, True):
        with pytest.raises(InputError, match="prefill_chunk_tokens"):
            model.generate(torch.tensor([[3, 4]]), prefill_chunk_tokens=bad)
