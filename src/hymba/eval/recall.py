"""Recall benchmarks: multi-query associative recall (MQAR), needle-in-a-haystack and pass-key.

MQAR and the token-level needle test are synthetic token sequences for models trained on them
(the ablation study); the pass-key test is text, for any checkpoint with a tokenizer.

Token layout of the synthetic tasks (:class:`SyntheticVocab`): ids 0–3 are reserved (pad, BOS,
EOS, spare), then the keys, the values and the filler tokens. An MQAR sequence is::

    BOS k1 v1 k2 v2 … kP vP  f f f … f  q1 a1 q2 a2 … qQ aQ

where every query ``q`` is one of the keys and its answer ``a`` the value stored with it. The
filler gap sets how far the queries are from the pairs, so the same task probes recall within
and well beyond a sliding window. The needle test is MQAR with one pair hidden at a chosen depth
of a filler haystack and queried at the end.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..model import InputError
from .scoring import score_pairs

RESERVED = 4


@dataclass(frozen=True)
class SyntheticVocab:
    """Id ranges of the synthetic tasks inside a model's vocabulary."""

    vocab_size: int
    num_keys: int = 64
    num_values: int = 64

    def __post_init__(self) -> None:
        if self.vocab_size < RESERVED + self.num_keys + self.num_values + 8:
            raise InputError(
                f"vocabulary of {self.vocab_size} is too small for {self.num_keys} keys, "
                f"{self.num_values} values and 8 filler tokens"
            )

    @property
    def keys(self) -> range:
        return range(RESERVED, RESERVED + self.num_keys)

    @property
    def values(self) -> range:
        return range(self.keys.stop, self.keys.stop + self.num_values)

    @property
    def filler(self) -> range:
        return range(self.values.stop, self.vocab_size)


@dataclass
class RecallBatch:
    """Sequences of one length plus where the answers are: ``answer_pos[b, j]`` is the index of
    the j-th answer token of row b (predicted from position ``answer_pos - 1``)."""

    input_ids: Tensor  # (batch, length)
    answer_pos: Tensor  # (batch, queries)
    meta: dict = field(default_factory=dict)

    def labels(self) -> Tensor:
        """Training labels: the answers, -100 everywhere else (HF convention: labels aligned
        with the inputs, shifted inside the loss)."""
        labels = torch.full_like(self.input_ids, -100)
        return labels.scatter(1, self.answer_pos, self.input_ids.gather(1, self.answer_pos))


def _mqar_row(rng: random.Random, vocab: SyntheticVocab, length: int, pairs: int, queries: int,
              needle_depth: float | None) -> tuple[list[int], list[int]]:
    keys = rng.sample(vocab.keys, pairs)
    values = [rng.choice(vocab.values) for _ in keys]
    asked = rng.sample(range(pairs), queries)
    kv = [t for pair in zip(keys, values) for t in pair]
    gap = length - 1 - len(kv) - 2 * queries
    filler = [rng.choice(vocab.filler) for _ in range(gap)]
    if needle_depth is None:
        body = kv + filler
    else:
        cut = round(needle_depth * gap)
        body = filler[:cut] + kv + filler[cut:]
    row = [1, *body]
    answers = []
    for j in asked:
        row += [keys[j], values[j]]
        answers.append(len(row) - 1)
    return row, answers


def mqar_batch(
    batch: int, length: int, vocab: SyntheticVocab, pairs: int = 8, queries: int | None = None,
    seed: int | None = None, needle_depth: float | None = None,
) -> RecallBatch:
    """``batch`` MQAR sequences of exactly ``length`` tokens (see the module docstring).

    ``needle_depth`` in [0, 1] places the pairs at that depth of the filler instead of first.
    """
    queries = pairs if queries is None else queries
    if not 1 <= queries <= pairs <= vocab.num_keys:
        raise InputError(f"need 1 <= queries ({queries}) <= pairs ({pairs}) <= keys ({vocab.num_keys})")
    if length < 1 + 2 * pairs + 2 * queries:
        raise InputError(f"length {length} is too short for {pairs} pairs and {queries} queries")
    rng = random.Random(seed)
    rows, answers = zip(*(_mqar_row(rng, vocab, length, pairs, queries, needle_depth) for _ in range(batch)))
    return RecallBatch(torch.tensor(rows), torch.tensor(answers),
                       {"length": length, "pairs": pairs, "queries": queries, "depth": needle_depth})


@torch.no_grad()
def answer_correct(model: torch.nn.Module, batch: RecallBatch, batch_size: int = 16) -> Tensor:
    """Boolean (batch, queries): is the greedy prediction at each answer position right?"""
    device = next(model.parameters()).device
    out = []
    for start in range(0, batch.input_ids.shape[0], batch_size):
        ids = batch.input_ids[start:start + batch_size].to(device)
        pos = batch.answer_pos[start:start + batch_size].to(device)
        first = int(pos.min()) - 1
        logits = model(ids, logits_to_keep=ids.shape[1] - first).logits
        pred = logits.argmax(-1).gather(1, pos - 1 - first)
        out.append((pred == ids.gather(1, pos)).cpu())
    return torch.cat(out)


def mqar_accuracy(
    model: torch.nn.Module, vocab: SyntheticVocab, lengths: Sequence[int], samples: int = 64,
    pairs: int = 8, queries: int | None = None, seed: int = 1234, batch_size: int = 16,
) -> list[dict]:
    """Per length: mean accuracy and accuracy of each query slot (query 1 is asked first)."""
    rows = []
    for length in lengths:
        batch = mqar_batch(samples, length, vocab, pairs, queries, seed=seed + length)
        correct = answer_correct(model, batch, batch_size).float()
        rows.append({"task": "mqar", "length": length, "accuracy": float(correct.mean()),
                     "per_query": [round(float(x), 4) for x in correct.mean(0)]})
    return rows


def needle_accuracy(
    model: torch.nn.Module, vocab: SyntheticVocab, lengths: Sequence[int],
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), samples: int = 32, seed: int = 4321,
    batch_size: int = 16,
) -> list[dict]:
    """Per length: accuracy of recalling one key–value needle hidden at each depth."""
    rows = []
    for length in lengths:
        per_depth = {}
        for depth in depths:
            batch = mqar_batch(samples, length, vocab, 1, 1, seed=seed + length, needle_depth=depth)
            per_depth[str(depth)] = float(answer_correct(model, batch, batch_size).float().mean())
        rows.append({"task": "niah", "length": length,
                     "accuracy": sum(per_depth.values()) / len(per_depth), "per_depth": per_depth})
    return rows


_HAY = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def passkey_pairs(tokenizer, length: int, depth: float, samples: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Pass-key retrieval prompts of about ``length`` tokens with the key at ``depth``; each is a
    (prompt ids, answer ids) pair."""
    rng = random.Random(seed)
    hay = tokenizer.encode(_HAY, add_bos=False)
    out = []
    for _ in range(samples):
        key = str(rng.randint(10000, 99999))
        needle = tokenizer.encode(f"The pass key is {key}. Remember it. {key} is the pass key. ", add_bos=False)
        question = tokenizer.encode("What is the pass key? The pass key is", add_bos=False)
        answer = tokenizer.encode(f" {key}", add_bos=False)
        room = max(0, length - len(needle) - len(question) - 1)
        filler = (hay * (room // max(1, len(hay)) + 1))[:room]
        cut = round(depth * room)
        prompt = tokenizer.encode("", add_bos=True) + filler[:cut] + needle + filler[cut:] + question
        out.append((prompt, answer))
    return out


def passkey_accuracy(
    model: torch.nn.Module, tokenizer, lengths: Sequence[int],
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), samples: int = 8, seed: int = 99,
    batch_size: int = 4,
) -> list[dict]:
    """Per length: share of prompts whose pass key is the greedy continuation, by depth."""
    pad = tokenizer.pad_token_id or 0
    rows = []
    for length in lengths:
        per_depth = {}
        for depth in depths:
            pairs = passkey_pairs(tokenizer, length, depth, samples, seed + length)
            scores = score_pairs(model, pairs, batch_size=batch_size, pad_id=pad)
            per_depth[str(depth)] = sum(s.is_greedy for s in scores) / len(scores)
        rows.append({"task": "passkey", "length": length,
                     "accuracy": sum(per_depth.values()) / len(per_depth), "per_depth": per_depth})
    return rows
