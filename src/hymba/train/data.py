"""Training data: read documents, tokenize, pack into fixed-length sequences, batch deterministically.

Documents come from plain-text files (one document per file) and JSON-lines files (one document
per line, in its ``text`` field), optionally gzipped, or from folders of such files. Every
document is followed by the EOS token and the concatenation is cut into sequences of ``seq_len``
tokens; every ``1/val_fraction``-th sequence is held out for validation.

Batches are a pure function of (seed, batch index): the data position is just the number of
global batches consumed, which makes resuming exact. With several processes each rank takes
every ``world_size``-th row of the global batch.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..tokenizer import HymbaTokenizer

TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".json")


class DataError(ValueError):
    """Training data is missing, unreadable or too small."""


def _kind(path: str) -> str | None:
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    return None


def data_files(paths: Sequence[str]) -> list[str]:
    """The readable data files named by ``paths`` (folders are searched recursively, sorted)."""
    if not paths:
        raise DataError("no data paths given")
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(path) for name in names
                if _kind(name) is not None
            )
            if not found:
                raise DataError(f"data folder {path} has no .txt/.jsonl files (optionally .gz)")
            files.extend(found)
        elif os.path.isfile(path):
            if _kind(path) is None:
                raise DataError(f"data file {path}: unknown type (use .txt or .jsonl, optionally .gz)")
            files.append(path)
        else:
            raise DataError(f"data path {path} does not exist")
    return files


def _open(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_documents(paths: Sequence[str]) -> Iterator[str]:
    """Every non-empty document of the data files, in order."""
    for path in data_files(paths):
        try:
            with _open(path) as fh:
                if _kind(path) == "text":
                    text = fh.read()
                    if text.strip():
                        yield text
                    continue
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                    text = record.get("text") if isinstance(record, dict) else None
                    if not isinstance(text, str):
                        raise DataError(f"{path}:{lineno}: expected an object with a string 'text' field")
                    if text.strip():
                        yield text
        except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from None


def tokenize_documents(docs: Sequence[str], tokenizer: HymbaTokenizer, batch: int = 64) -> np.ndarray:
    """The token stream: every document's ids followed by EOS (int32)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no EOS token to separate documents")
    pieces: list[np.ndarray] = []
    for start in range(0, len(docs), batch):
        for enc in tokenizer.tokenizer.encode_batch(list(docs[start : start + batch]), add_special_tokens=False):
            pieces.append(np.asarray(enc.ids + [eos], dtype=np.int32))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)


def pack(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """Cut the stream into ``(n, seq_len)`` rows; the incomplete tail is dropped."""
    n = len(tokens) // seq_len
    return tokens[: n * seq_len].reshape(n, seq_len)


@dataclass
class PackedData:
    """Packed training and validation sequences."""

    train: torch.Tensor  # (n_train, seq_len) int64
    val: torch.Tensor  # (n_val, seq_len) int64

    @classmethod
    def build(cls, tokens: np.ndarray, seq_len: int, val_fraction: float) -> PackedData:
        rows = pack(tokens, seq_len)
        if len(rows) < 2:
            raise DataError(
                f"the corpus has {len(tokens)} tokens, too few for two sequences of {seq_len} tokens"
            )
        if not 0 < val_fraction < 1:
            raise DataError(f"val_fraction must lie in (0, 1), got {val_fraction}")
        every = max(2, round(1 / val_fraction))
        is_val = np.arange(len(rows)) % every == every - 1
        if not is_val.any():
            is_val[-1] = True
        return cls(train=torch.from_numpy(rows[~is_val].astype(np.int64)),
                   val=torch.from_numpy(rows[is_val].astype(np.int64)))


class BatchStream:
    """Global batch ``k`` of a shuffled, epoch-repeating pass over ``rows``, as a pure function of
    ``(seed, k)``; ``rank``/``world_size`` select this process's rows of it."""

    def __init__(self, rows: torch.Tensor, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise DataError(f"batch size {batch_size} is not divisible by {world_size} processes")
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._perm: tuple[int, torch.Tensor] | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.rows), generator=g))
        return self._perm[1]

    def batch(self, k: int) -> torch.Tensor:
        n = len(self.rows)
        idx = []
        for j in range(self.rank, self.batch_size, self.world_size):
            g = k * self.batch_size + j
            idx.append(int(self._permutation(g // n)[g % n]))
        return self.rows[idx]


def unigram_entropy(rows: torch.Tensor, vocab_size: int) -> float:
    """Entropy (nats/token) of the token frequencies of ``rows``: the loss of the best model that
    ignores context, a baseline a trained LM must beat."""
    counts = torch.bincount(rows.reshape(-1), minlength=vocab_size).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())
