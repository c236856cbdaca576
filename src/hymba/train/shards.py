"""Pre-tokenised corpora: memory-mapped token shards (``hymba tokenize``).

A shard folder holds ``tokens-00000.bin``, ``tokens-00001.bin``, ... (raw little-endian
``uint16`` ids, ``uint32`` for vocabularies above 65,536), for shards that contain chat data a
``mask-NNNNN.bin`` beside them (one byte per token: 1 = trained on), the tokenizer files, and
``tokens.json`` (the metadata, written last: a folder without it is incomplete). Writing streams
the corpus through a fixed-size buffer and reading memory-maps the files, so neither needs memory
in proportion to the corpus.

Rows: each shard is cut into ``seq_len``-token rows (no row crosses a shard boundary), numbered
across shards; every ``1 / val_fraction``-th row is held out for validation. A row is returned as
token ids with trained-off tokens stored negated (``-1 - id``), see :func:`split_labels`.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from ..jsonfile import write_json
from ..tokenizer import HymbaTokenizer
from .encoding import Encoded
from .sources import DataError

META_NAME = "tokens.json"
FORMAT = "hymba-tokens"
_FLUSH_TOKENS = 1 << 20


def tokenizer_fingerprint(tokenizer: HymbaTokenizer) -> str:
    """A hash of the tokenizer's vocabulary and rules, to match shards with their tokenizer."""
    return hashlib.sha256(tokenizer.tokenizer.to_str().encode("utf-8")).hexdigest()[:16]


def is_shard_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, META_NAME))


class ShardWriter:
    """Appends encoded documents to shard files of at most ``shard_tokens`` tokens each."""

    def __init__(self, folder: str, tokenizer: HymbaTokenizer, shard_tokens: int = 1 << 28) -> None:
        if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
            raise DataError(f"output folder {folder} already exists and is not empty")
        if shard_tokens < 1:
            raise DataError(f"shard size must be >= 1 token, got {shard_tokens}")
        os.makedirs(folder, exist_ok=True)
        self.folder, self.tokenizer, self.shard_tokens = folder, tokenizer, shard_tokens
        self.dtype = np.uint16 if len(tokenizer) <= 1 << 16 else np.uint32
        self.shards: list[dict[str, Any]] = []
        self.documents = self.tokens = self.trained = 0
        self._ids: list[np.ndarray] = []
        self._masks: list[np.ndarray | None] = []
        self._buffered = 0

    def add(self, part: Encoded) -> None:
        self._ids.append(part.ids)
        self._masks.append(part.mask)
        self._buffered += len(part.ids)
        self.documents += part.end
        if self._buffered >= _FLUSH_TOKENS:
            self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        ids = np.concatenate(self._ids)
        masked = any(m is not None for m in self._masks)
        mask = (np.concatenate([np.ones(len(i), bool) if m is None else m for i, m in zip(self._ids, self._masks)])
                if masked else None)
        self._ids, self._masks, self._buffered = [], [], 0
        self.tokens += len(ids)
        self.trained += int(mask.sum()) if mask is not None else len(ids)
        while len(ids):
            if not self.shards or self.shards[-1]["tokens"] >= self.shard_tokens:
                self.shards.append({"file": f"tokens-{len(self.shards):05d}.bin", "mask": None, "tokens": 0})
            shard = self.shards[-1]
            n = min(len(ids), self.shard_tokens - shard["tokens"])
            self._append(shard, ids[:n], None if mask is None else mask[:n])
            ids = ids[n:]
            mask = None if mask is None else mask[n:]

    def _append(self, shard: dict[str, Any], ids: np.ndarray, mask: np.ndarray | None) -> None:
        with open(os.path.join(self.folder, shard["file"]), "ab") as fh:
            ids.astype(self.dtype).tofile(fh)
        if mask is not None and shard["mask"] is None and not mask.all():
            shard["mask"] = shard["file"].replace("tokens-", "mask-")
            _write_ones(os.path.join(self.folder, shard["mask"]), shard["tokens"])
        if shard["mask"] is not None:
            with open(os.path.join(self.folder, shard["mask"]), "ab") as fh:
                (np.ones(len(ids), np.uint8) if mask is None else mask.astype(np.uint8)).tofile(fh)
        shard["tokens"] += len(ids)

    def close(self, sources: list[str]) -> dict[str, Any]:
        """Write the remaining tokens, the tokenizer and the metadata; return the metadata."""
        self._flush()
        if not self.tokens:
            raise DataError(f"the corpus is empty (no text in {', '.join(sources)})")
        self.tokenizer.save(self.folder)
        meta = {
            "format": FORMAT, "version": 1, "dtype": np.dtype(self.dtype).name,
            "vocab_size": len(self.tokenizer), "eos_token_id": self.tokenizer.eos_token_id,
            "tokenizer": tokenizer_fingerprint(self.tokenizer), "documents": self.documents,
            "tokens": self.tokens, "trained_tokens": self.trained, "sources": sources,
            "shards": self.shards,
        }
        write_json(os.path.join(self.folder, META_NAME), meta)
        return meta


def _write_ones(path: str, count: int) -> None:
    with open(path, "wb") as fh:
        for start in range(0, count, _FLUSH_TOKENS):
            np.ones(min(_FLUSH_TOKENS, count - start), np.uint8).tofile(fh)


def write_shards(
    parts: Iterable[Encoded], tokenizer: HymbaTokenizer, folder: str, sources: list[str],
    shard_tokens: int = 1 << 28, progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Stream ``parts`` into a new shard folder; ``progress`` gets the tokens of every part."""
    writer = ShardWriter(folder, tokenizer, shard_tokens)
    for part in parts:
        writer.add(part)
        if progress is not None:
            progress(len(part.ids))
    return writer.close(sources)


class ShardRows:
    """The training or validation rows of a shard folder, read from memory-mapped files.

    ``rows[i]``, ``rows[[i, j, ...]]`` and ``rows[a:b]`` give int64 tensors of shape
    ``(k, seq_len)`` (negated ids for tokens without loss).
    """

    def __init__(self, folder: str, seq_len: int, val_fraction: float, split: str) -> None:
        meta = read_meta(folder)
        self.seq_len, self.split = seq_len, split
        self.every = max(2, round(1 / val_fraction))
        self._tokens, self._masks, self._first_row = [], [], [0]
        for shard in meta["shards"]:
            n = shard["tokens"]
            self._tokens.append(np.memmap(os.path.join(folder, shard["file"]), dtype=meta["dtype"], mode="r", shape=(n,)))
            self._masks.append(None if shard["mask"] is None else
                               np.memmap(os.path.join(folder, shard["mask"]), dtype=np.uint8, mode="r", shape=(n,)))
            self._first_row.append(self._first_row[-1] + n // seq_len)
        total = self._first_row[-1]
        n_val = total // self.every
        self._length = n_val if split == "val" else total - n_val

    def __len__(self) -> int:
        return self._length

    def _global_row(self, i: int) -> int:
        if not 0 <= i < self._length:
            raise IndexError(f"row {i} out of range for {self._length} rows")
        if self.split == "val":
            return i * self.every + self.every - 1
        return (i // (self.every - 1)) * self.every + i % (self.every - 1)

    def _row(self, i: int) -> np.ndarray:
        g = self._global_row(i)
        s = bisect.bisect_right(self._first_row, g) - 1
        start = (g - self._first_row[s]) * self.seq_len
        ids = np.asarray(self._tokens[s][start : start + self.seq_len], dtype=np.int64)
        mask = self._masks[s]
        if mask is not None:
            ids = np.where(mask[start : start + self.seq_len] > 0, ids, -1 - ids)
        return ids

    def __getitem__(self, index: int | slice | list[int]) -> torch.Tensor:
        if isinstance(index, slice):
            index = list(range(*index.indices(self._length)))
        elif not isinstance(index, list):
            return torch.from_numpy(self._row(int(index)))
        rows = [self._row(int(i)) for i in index]
        return torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, self.seq_len, dtype=torch.long)


def read_meta(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, META_NAME)
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read token shard metadata {path}: {exc}") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{path} is not a hymba token shard folder")
    for shard in meta["shards"]:
        for name in (shard["file"], shard["mask"]):
            if name is not None and not os.path.isfile(os.path.join(folder, name)):
                raise DataError(f"token shard {os.path.join(folder, name)} is missing")
    return meta


def open_shards(folder: str, tokenizer: HymbaTokenizer, seq_len: int, val_fraction: float) -> tuple[ShardRows, ShardRows]:
    """Training and validation rows of a shard folder made with ``tokenizer``."""
    meta = read_meta(folder)
    if meta["tokenizer"] != tokenizer_fingerprint(tokenizer):
        raise DataError(f"the tokens in {folder} were made with a different tokenizer than this "
                        f"run's; use the tokenizer saved in {folder} or re-run hymba tokenize")
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    train, val = (ShardRows(folder, seq_len, val_fraction, s) for s in ("train", "val"))
    if not len(train) or not len(val):
        raise DataError(f"{folder} holds {meta['tokens']} tokens, too few for training and "
                        f"validation sequences of {seq_len} tokens")
    return train, val


def split_labels(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)`` of rows with negated no-loss tokens (labels -100 there)."""
    masked = rows < 0
    ids = torch.where(masked, -1 - rows, rows)
    return ids, ids.masked_fill(masked, -100)
