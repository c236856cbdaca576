"""Greedy decoding with stop strings for the evaluators (batched, left-padded prompts)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .scoring import left_pad


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to its earliest stop string, and whether one occurred."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop: Sequence[str] = (),
    eos_id: int | None = None,
    pad_id: int = 0,
) -> list[str]:
    """Greedy continuations of token-id prompts as text, each cut at its first stop string.

    A row stops at ``eos_id``, at a stop string or after ``max_new_tokens`` tokens; the batch
    stops when every row has.
    """
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    generated: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for _ in range(max_new_tokens):
        logits = model(ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
        nxt = logits.argmax(-1)
        for row, token in enumerate(nxt.tolist()):
            if done[row]:
                continue
            if token == eos_id:
                done[row] = True
                continue
            generated[row].append(token)
            done[row] = cut_at_stop(tokenizer.decode(generated[row]), stop)[1]
        if all(done):
            break
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return [cut_at_stop(tokenizer.decode(row), stop)[0] for row in generated]
