"""Batched log-likelihood scoring of (context, continuation) token pairs.

Everything that measures a model by its next-token probabilities (perplexity, the lm-eval
adapter, the recall benchmarks) goes through :func:`score_pairs`: pairs are sorted by length,
left-padded into batches (each row then gets exactly the logits it would get alone) and only the
logits of the continuation positions are computed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..model import InputError


@dataclass(frozen=True)
class PairScore:
    """Score of one continuation: summed log-probability (nats), whether every continuation
    token is the argmax prediction, and how many of them are."""

    logprob: float
    is_greedy: bool
    num_correct: int
    num_tokens: int


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Left-pad token rows into ``(input_ids, attention_mask)`` of shape (len(rows), max length)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def _batches(order: list[int], lengths: list[int], batch_size: int, max_batch_tokens: int | None) -> Iterator[list[int]]:
    """Group indices (already sorted longest first) into batches of at most ``batch_size`` rows
    and, if given, at most ``max_batch_tokens`` padded tokens."""
    batch: list[int] = []
    for i in order:
        width = lengths[batch[0]] if batch else lengths[i]
        too_many = max_batch_tokens is not None and (len(batch) + 1) * width > max_batch_tokens
        if batch and (len(batch) == batch_size or too_many):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


@torch.no_grad()
def score_pairs(
    model: torch.nn.Module,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 8,
    pad_id: int = 0,
    max_length: int | None = None,
    max_batch_tokens: int | None = None,
    progress: bool = False,
) -> list[PairScore]:
    """Log-likelihood of each continuation given its context, batched with left padding.

    ``pairs``: ``(context_ids, continuation_ids)`` with a non-empty context and continuation.
    Inputs longer than ``max_length`` tokens keep their last ``max_length`` tokens (the
    continuation itself must fit). Results come back in input order.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    rows: list[list[int]] = []
    for i, (context, continuation) in enumerate(pairs):
        if not context or not continuation:
            raise InputError(f"pair {i}: context and continuation must both be non-empty")
        row = [*context, *continuation][:-1]
        if max_length is not None and len(row) > max_length:
            if len(continuation) > max_length:
                raise InputError(f"pair {i}: continuation of {len(continuation)} tokens exceeds max_length {max_length}")
            row = row[-max_length:]
        rows.append(row)
    lengths = [len(r) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: -lengths[i])
    results: list[PairScore | None] = [None] * len(rows)
    device = next(model.parameters()).device
    batches = list(_batches(order, lengths, batch_size, max_batch_tokens))
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="scoring", unit="batch")
    for batch in batches:
        ids, mask = left_pad([rows[i] for i in batch], pad_id, device)
        keep = max(len(pairs[i][1]) for i in batch)
        logits = model(ids, attention_mask=mask, logits_to_keep=keep).logits
        for row, i in enumerate(batch):  # row by row: one extra (n, vocab) tensor at a time
            target = torch.tensor(list(pairs[i][1]), dtype=torch.long, device=device)
            lp = torch.log_softmax(logits[row, keep - len(target):].float(), dim=-1)
            token_lp = lp.gather(-1, target[:, None]).squeeze(-1)
            correct = lp.argmax(-1) == target
            results[i] = PairScore(float(token_lp.sum()), bool(correct.all()), int(correct.sum()), len(target))
    return results  # type: ignore[return-value]


def sliding_windows(tokens: Sequence[int], window: int, stride: int) -> list[tuple[list[int], list[int]]]:
    """Strided sliding-window split of next-token prediction over ``tokens[1:]``.

    Each pair's model input (context + continuation minus its last token) is at most ``window``
    tokens; every target token is scored exactly once, the first window scores up to ``window``
    tokens and every later one ``stride`` new tokens with ``window - stride`` tokens of context.
    """
    if window < 1 or not 1 <= stride <= window:
        raise InputError(f"need window >= 1 and 1 <= stride <= window, got window={window}, stride={stride}")
    pairs = []
    start, n = 1, len(tokens)
    while start < n:
        end = min(n, window + 1 if start == 1 else start + stride)
        begin = max(0, end - 1 - window)
        pairs.append((list(tokens[begin:start]), list(tokens[start:end])))
        start = end
    return pairs
