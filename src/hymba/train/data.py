"""Training data: tokenize documents, pack them into fixed-length sequences, batch deterministically.

Documents are read by :mod:`.sources` (text, jsonl, parquet, saved datasets; chats for
supervised fine-tuning) and encoded by :mod:`.encoding`. Every document is followed by the EOS
token and the concatenation is cut into sequences of ``seq_len`` tokens; every
``1/val_fraction``-th sequence is held out for validation. Tokens without loss (the prompt part
of a chat) are stored negated, ``-1 - id``; :func:`~.shards.split_labels` turns a batch into
``(input_ids, labels)``. Pre-tokenised shard folders (:mod:`.shards`) give the same rows from disk.

Batches are a pure function of (seed, batch index): the data position is just the number of
global batches consumed, which makes resuming exact. With several processes each rank takes
every ``world_size``-th row of the global batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..tokenizer import HymbaTokenizer
from .encoding import DocumentEncoder
from .shards import ShardRows, is_shard_folder, open_shards, split_labels
from .sources import DataError, Messages, Piece, iter_documents, iter_pieces

__all__ = ["BatchStream", "DataError", "PackedData", "iter_documents", "load_rows", "pack",
           "split_labels", "tokenize_documents", "unigram_entropy"]


def _stream(parts) -> np.ndarray:
    chunks = [p.ids if p.mask is None else np.where(p.mask, p.ids, -1 - p.ids) for p in parts]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)


def tokenize_documents(docs: Sequence[str | Messages], tokenizer: HymbaTokenizer) -> np.ndarray:
    """The token stream of ``docs`` (int64): every document followed by EOS, tokens without
    loss (the non-reply part of a chat) negated as ``-1 - id``."""
    return _stream(DocumentEncoder(tokenizer).encode(Piece(d) for d in docs))


def tokenize_files(paths: Sequence[str], tokenizer: HymbaTokenizer) -> np.ndarray:
    """:func:`tokenize_documents` of every document of the data files, streamed."""
    return _stream(DocumentEncoder(tokenizer).encode(iter_pieces(paths)))


def pack(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """Cut the stream into ``(n, seq_len)`` rows; the incomplete tail is dropped."""
    n = len(tokens) // seq_len
    return tokens[: n * seq_len].reshape(n, seq_len)


@dataclass
class PackedData:
    """Packed training and validation sequences."""

    train: torch.Tensor | ShardRows  # (n_train, seq_len) int64, no-loss tokens negated
    val: torch.Tensor | ShardRows  # (n_val, seq_len)

    @classmethod
    def build(cls, tokens: np.ndarray, seq_len: int, val_fraction: float) -> PackedData:
        """Rows of an in-memory token stream (the validation rule of :class:`ShardRows`)."""
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


def unigram_entropy(rows: torch.Tensor | ShardRows, vocab_size: int) -> float:
    """Entropy (nats/token) of the frequencies of the trained-on tokens of ``rows``: the loss of
    the best model that ignores context, a baseline a trained LM must beat."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for start in range(0, len(rows), 4096):
        chunk = rows[start : start + 4096].reshape(-1)
        counts += torch.bincount(chunk[chunk >= 0], minlength=vocab_size).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def load_rows(paths: Sequence[str], tokenizer: HymbaTokenizer, seq_len: int, val_fraction: float) -> PackedData:
    """Training and validation rows of data files, or of one ``hymba tokenize`` shard folder
    (memory-mapped, so the corpus may be larger than memory)."""
    if len(paths) == 1 and is_shard_folder(paths[0]):
        return PackedData(*open_shards(paths[0], tokenizer, seq_len, val_fraction))
    shard_folders = [p for p in paths if is_shard_folder(p)]
    if shard_folders:
        raise DataError(f"{shard_folders[0]} is a 'hymba tokenize' folder: give it as the only data path")
    tokens = tokenize_files(paths, tokenizer)
    if not len(tokens):
        raise DataError(f"the corpus is empty (no text in {', '.join(paths)})")
    return PackedData.build(tokens, seq_len, val_fraction)
