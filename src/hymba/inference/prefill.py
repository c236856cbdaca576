"""Prefill: store a batch of prompts in a cache in pieces, so that memory stays near weights +
cache + one piece's activations however many prompt tokens there are.

A piece is a group of rows and, for prompts longer than the piece size, a span of columns.
Each group of rows is prefilled through a view of the cache's rows
(:meth:`HybridCache.rows`); the spans of one group follow one another with the hybrid state
carried between them: K/V go into the cache (global layers keep every token, sliding-window
layers a ring of the last ``window + 1``), and the conv inputs and SSM state continue. A row
whose prompt ended before a span takes no part in it (its new-token count there is 0).
The serving engine prefills a newcomer's prompt the same way, one span per scheduler step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..model.layout import InputError
from .cache import HybridCache

# When no piece size is given and the model is not on a GPU: the prompt tokens of one piece.
DEFAULT_CPU_CHUNK_TOKENS = 16384
# Share of the free GPU memory that one piece's activations may take (the rest is margin for
# the allocator's fragmentation and the estimate's error).
FREE_MEMORY_SHARE = 0.4


def activation_bytes_per_token(config, dtype: torch.dtype) -> int:
    """An upper estimate of the transient bytes one prompt token needs during a prefill: the
    fused input projection's output, the MLP's gate/up/product, a few model-width tensors in the
    model dtype, and the SSM branch's float32 working tensors (Δ, the scan's inputs and output)."""
    width = torch.empty((), dtype=dtype).element_size()
    fused = (config.num_attention_heads * config.qk_head_dim
             + 2 * config.num_key_value_heads * (config.qk_head_dim + config.value_head_dim)
             + 2 * config.d_inner)
    model_dtype = fused + 3 * config.intermediate_size + 6 * config.hidden_size + 4 * config.d_inner
    return width * model_dtype + 4 * 6 * config.d_inner


def default_chunk_tokens(model) -> int:
    """Prompt tokens per piece: from the free memory on a GPU, a fixed budget elsewhere."""
    device = model.device
    if device.type != "cuda":
        return DEFAULT_CPU_CHUNK_TOKENS
    free, _ = torch.cuda.mem_get_info(device)
    per_token = activation_bytes_per_token(model.config, model.dtype)
    tokens = int(FREE_MEMORY_SHARE * free // per_token)
    return max(256, tokens // 256 * 256)


def plan_pieces(counts: list[int], chunk_tokens: int) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """Split rows with ``counts`` real tokens (right-padded) into pieces of at most
    ``chunk_tokens`` tokens: ``[(row_start, row_stop, [(col_start, col_stop), ...]), ...]``. Rows
    are grouped in order; a group's spans cover its longest prompt."""
    pieces = []
    start = 0
    while start < len(counts):
        stop = start + 1
        # grow the group while (rows x its longest prompt) fits
        while stop < len(counts) and (stop + 1 - start) * max(counts[start : stop + 1]) <= chunk_tokens:
            stop += 1
        longest = max(counts[start:stop])
        span = max(1, min(longest, chunk_tokens // (stop - start)))
        pieces.append((start, stop, [(s, min(s + span, longest)) for s in range(0, longest, span)]))
        start = stop
    return pieces


@torch.no_grad()
def prefill(
    model,
    cache: HybridCache,
    ids: Tensor,
    counts: Tensor | None = None,
    chunk_tokens: int | None = None,
) -> Tensor:
    """Store prompts ``ids`` (b, L), right-padded with ``counts`` (b,) real tokens per row (None:
    all L), in ``cache`` rows that start afresh after the meta tokens (:meth:`HybridCache.reset`
    or :meth:`~HybridCache.reset_rows` first), and return the logits of each row's last prompt
    token (b, V), float32.

    ``chunk_tokens`` bounds the prompt tokens of one piece (default: :func:`default_chunk_tokens`);
    results equal one pass over the whole batch up to floating-point rounding.
    """
    b, length = ids.shape
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(model)
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise InputError(f"prefill_chunk_tokens must be a positive integer, got {chunk_tokens!r}")
    host_counts = [length] * b if counts is None else counts.tolist()  # one read, before the work
    if min(host_counts) < 1:
        raise InputError("every prompt needs at least one token")
    counts_dev = None if counts is None else counts.to(ids.device)
    pieces = plan_pieces(host_counts, chunk_tokens)
    if len(pieces) == 1 and len(pieces[0][2]) == 1:  # the whole batch is one piece
        return model(ids, state=cache, num_new=counts_dev, logits_to_keep=1).logits[:, 0]
    # views first: each starts where the cache stands now (fresh rows), before any piece is stored
    views = [(start, stop, cache.rows(start, stop) if stop - start < b else cache, spans)
             for start, stop, spans in pieces]
    last = None
    for start, stop, view, spans in views:
        group = slice(start, stop)
        rows_counts = host_counts[start:stop]
        for s, e in spans:
            piece = ids[group, s:e]
            full = all(c >= e for c in rows_counts)
            num_new = None if full else (counts_dev[group] - s).clamp(0, e - s)
            logits = model(piece, state=view, num_new=num_new, logits_to_keep=1).logits[:, 0]
            if last is None:
                last = logits.new_empty(b, logits.shape[-1])
            ends = [s < c <= e for c in rows_counts]
            if all(ends):
                last[group] = logits
            elif any(ends):
                here = torch.tensor(ends, device=logits.device)
                last[group] = torch.where(here[:, None], logits, last[group])
    return last
