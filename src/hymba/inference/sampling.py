"""How the next token is chosen from a step's logits: greedy, temperature, top-k, top-p and the
repetition penalty, for a whole batch with one setting."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..model.layout import InputError


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen. Greedy unless ``do_sample``; ``top_k=0`` and ``top_p=1``
    disable those filters; ``repetition_penalty`` (HF/CTRL style) applies in both modes."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"{name} must be a finite number, got {value!r}")
            return float(value)

        if number("temperature") <= 0:
            raise InputError(f"temperature must be > 0, got {self.temperature!r}")
        if not 0 < number("top_p") <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if number("repetition_penalty") <= 0:
            raise InputError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise InputError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")

    def scores(self, logits: Tensor, seen: Tensor | None) -> Tensor:
        """Processed next-token scores (b, V) from raw logits; -inf marks excluded tokens."""
        if seen is not None and self.repetition_penalty != 1.0:
            p = self.repetition_penalty
            logits = torch.where(seen, torch.where(logits < 0, logits * p, logits / p), logits)
        if not self.do_sample:
            return logits
        logits = logits / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            order = torch.sort(logits, dim=-1, descending=True)
            probs = order.values.softmax(-1)
            # drop a token once the more likely ones already reach top_p (always keep the first)
            drop = probs.cumsum(-1) - probs >= self.top_p
            logits = logits.masked_fill(drop.scatter(-1, order.indices, drop), float("-inf"))
        return logits

    def pick(self, scores: Tensor, generator: torch.Generator | None) -> Tensor:
        if not self.do_sample:
            return scores.argmax(-1)
        return torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]
