"""Perplexity with strided sliding windows: loss, perplexity and bits per byte over documents.

Each document is tokenized on its own (with the tokenizer's BOS), split by
:func:`~hymba.eval.scoring.sliding_windows` so that documents longer than the window are scored
with ``window - stride`` tokens of left context, and all windows of all documents are scored in
left-padded batches. Bits per byte divide the total negative log-likelihood by the UTF-8 size of
the text, which makes models with different tokenizers comparable.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..model import InputError
from .scoring import score_pairs, sliding_windows


@dataclass(frozen=True)
class PerplexityResult:
    documents: int
    tokens: int  # scored (predicted) tokens
    bytes: int  # UTF-8 bytes of the documents
    nll: float  # total negative log-likelihood, nats
    window: int
    stride: int

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood per token (nats)."""
        return self.nll / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (math.log(2) * self.bytes)

    def to_dict(self) -> dict:
        return {**asdict(self), "loss": self.loss, "perplexity": self.perplexity,
                "bits_per_byte": self.bits_per_byte}


def read_documents(paths: Sequence[str | os.PathLike], field: str = "text") -> list[str]:
    """Documents from files: a ``.jsonl`` file gives one document per line (its ``field``),
    any other file is one UTF-8 text document."""
    docs: list[str] = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            raise InputError(f"data path {path} is a folder; give text or .jsonl files")
        if not os.path.isfile(path):
            raise InputError(f"data file {path} does not exist")
        try:
            with open(path, encoding="utf-8") as fh:
                if not path.endswith(".jsonl"):
                    docs.append(fh.read())
                    continue
                for line_no, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    record = json.loads(line)
                    if not isinstance(record, dict) or not isinstance(record.get(field), str):
                        raise InputError(f"{path}:{line_no}: expected a JSON object with a string {field!r}")
                    docs.append(record[field])
        except UnicodeDecodeError as exc:
            raise InputError(f"{path} is not UTF-8 text: {exc}") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: invalid JSON line: {exc}") from None
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise InputError("no non-empty documents in the data files")
    return docs


def token_perplexity(
    model: torch.nn.Module,
    documents: Sequence[Sequence[int]],
    byte_counts: Sequence[int],
    window: int,
    stride: int | None = None,
    batch_size: int = 4,
    pad_id: int = 0,
    progress: bool = False,
) -> PerplexityResult:
    """Perplexity of token-id documents (each should start with its BOS/prefix token, which is
    not predicted)."""
    stride = window // 2 if stride is None else stride
    pairs = [pair for doc in documents for pair in sliding_windows(doc, window, max(1, stride))]
    if not pairs:
        raise InputError("every document is shorter than 2 tokens: nothing to score")
    scores = score_pairs(model, pairs, batch_size=batch_size, pad_id=pad_id, progress=progress)
    return PerplexityResult(
        documents=len(documents), tokens=sum(s.num_tokens for s in scores), bytes=sum(byte_counts),
        nll=-sum(s.logprob for s in scores), window=window, stride=stride,
    )


def text_perplexity(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    window: int,
    stride: int | None = None,
    batch_size: int = 4,
    progress: bool = False,
) -> PerplexityResult:
    """Perplexity of text documents with a :class:`~hymba.tokenizer.HymbaTokenizer` (a BOS is
    prepended to every document, so its first token is predicted too)."""
    docs = [tokenizer.encode(text, add_bos=True) for text in texts]
    pad = tokenizer.pad_token_id
    return token_perplexity(
        model, docs, [len(t.encode("utf-8")) for t in texts], window, stride, batch_size,
        pad_id=0 if pad is None else pad, progress=progress,
    )
