"""Next-token choice for a batch whose rows each have their own sampling parameters.

Every decode slot keeps its parameters in small device tensors (temperature, top-k, top-p,
repetition penalty) and a mask of the tokens it has seen; one call chooses the next token of every
row at once. Greedy rows take the argmax; sampled rows draw with the Gumbel-max trick, which picks
token ``i`` with probability ``softmax(scores)[i]`` exactly, from uniform noise that a row with a
seed draws from its own generator (so its tokens do not depend on who else is in the batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def device_index(values: list[int], device: torch.device) -> Tensor:
    """``values`` as an int64 tensor on ``device`` without waiting for it: ``torch.tensor(values,
    device="cuda")`` copies synchronously, which waits for every kernel queued before it (the
    step the engine just queued); a non-blocking copy from pinned host memory does not."""
    host = torch.tensor(values, dtype=torch.long)
    if torch.device(device).type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


@dataclass
class TokenChoice:
    tokens: Tensor  # (k,) chosen token ids
    logprobs: Tensor | None  # (k,) log-probability of each chosen token under the raw logits
    top_ids: Tensor | None  # (k, n) the n most likely tokens under the raw logits
    top_logprobs: Tensor | None  # (k, n)


class SlotSampler:
    """Sampling parameters of ``slots`` rows, set per row with :meth:`set_row`."""

    def __init__(self, slots: int, vocab_size: int, device: torch.device) -> None:
        self.vocab_size, self.device = vocab_size, device
        self.temperature = torch.zeros(slots, device=device)  # 0 = greedy
        self.top_k = torch.full((slots,), vocab_size, dtype=torch.long, device=device)
        self.top_p = torch.ones(slots, device=device)
        self.penalty = torch.ones(slots, device=device)
        self.seen = torch.zeros(slots, vocab_size, dtype=torch.bool, device=device)
        self._true = torch.ones((), dtype=torch.bool, device=device)
        self.generators: dict[int, torch.Generator] = {}
        self.shared = torch.Generator(device=device)
        self.shared.seed()
        # host copies: which optional work any row needs
        self._host = [dict(sample=False, filters=False, penalty=False)] * slots

    def set_row(self, row: int, params, prompt_ids: list[int]) -> None:
        """Give row ``row`` the parameters ``params`` (a SamplingParams) for a new request."""
        sample = params.temperature > 0
        top_k = params.top_k if params.top_k > 0 else self.vocab_size
        # fills, not `t[row] = value`: that is a synchronous copy from the host into a CUDA tensor
        self.temperature[row].fill_(params.temperature)
        self.top_k[row].fill_(min(top_k, self.vocab_size))
        self.top_p[row].fill_(params.top_p)
        self.penalty[row].fill_(params.repetition_penalty)
        self.seen[row].fill_(False)
        if params.repetition_penalty != 1.0:
            self.seen[row].index_fill_(0, device_index(prompt_ids, self.device), True)
        self.generators.pop(row, None)
        if sample and params.seed is not None:
            g = torch.Generator(device=self.device)
            g.manual_seed(params.seed)
            self.generators[row] = g
        self._host = list(self._host)
        self._host[row] = dict(sample=sample, filters=sample and (top_k < self.vocab_size or params.top_p < 1.0),
                               penalty=params.repetition_penalty != 1.0)

    def choose(self, logits: Tensor, rows: list[int], num_logprobs: int | None,
               index: Tensor | None = None) -> TokenChoice:
        """Next tokens for ``logits`` (k, V) float32 of rows ``rows`` (``index``: the same rows as
        a device tensor, if the caller has one); with ``num_logprobs`` (n >= 0) also the chosen
        tokens' log-probabilities and the n most likely tokens'."""
        if index is None:
            index = device_index(rows, logits.device)
        host = [self._host[r] for r in rows]
        penalty = any(h["penalty"] for h in host)
        scores = logits
        if penalty:
            pen = self.penalty[index][:, None]
            seen = self.seen[index]
            scores = torch.where(seen, torch.where(scores < 0, scores * pen, scores / pen), scores)
        tokens = scores.argmax(-1)
        if any(h["sample"] for h in host):
            temp = self.temperature[index]
            scaled = scores / temp.clamp(min=1e-6)[:, None]
            if any(h["filters"] for h in host):
                ordered, order = torch.sort(scaled, dim=-1, descending=True)
                rank = torch.arange(scaled.shape[-1], device=scaled.device)[None]
                # top-k first, then top-p over what top-k kept (renormalised), as generate() does
                ordered = ordered.masked_fill(rank >= self.top_k[index][:, None], float("-inf"))
                probs = ordered.softmax(-1)
                top_p = self.top_p[index][:, None]
                drop = (probs.cumsum(-1) - probs >= top_p) & (top_p < 1.0)  # top_p = 1: no cut
                drop[:, 0] = False  # the most likely token always stays
                scaled = scaled.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
            noise = torch.rand(scaled.shape, generator=self.shared, device=scaled.device)
            for i, row in enumerate(rows):
                if row in self.generators:
                    noise[i] = torch.rand(scaled.shape[-1], generator=self.generators[row], device=scaled.device)
            gumbel = -torch.log(-torch.log(noise.clamp(1e-20, 1.0 - 1e-7)))
            tokens = torch.where(temp > 0, (scaled + gumbel).argmax(-1), tokens)
        if penalty:  # only the penalty reads what a row has seen
            self.seen.index_put_((index, tokens), self._true)
        if num_logprobs is None:
            return TokenChoice(tokens, None, None, None)
        logp = logits.log_softmax(-1)
        chosen = logp.gather(-1, tokens[:, None])[:, 0]
        top = logp.topk(num_logprobs, dim=-1) if num_logprobs else None
        return TokenChoice(tokens, chosen, top.indices if top else None, top.values if top else None)
