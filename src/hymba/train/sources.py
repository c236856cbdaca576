"""Reading training documents from files, streamed with bounded memory.

Supported inputs (``.gz`` allowed for the text formats):

* plain text (``.txt``, ``.md``, ``.text``): one document per file, read in blocks of about
  4 MB cut at line ends, so a file larger than memory streams;
* JSON lines (``.jsonl``, ``.json``): one document per line, either a ``text`` string or a chat
  ``messages`` list (``[{"role": ..., "content": ...}, ...]``, supervised fine-tuning);
* Parquet (``.parquet``; needs ``pyarrow``): a ``text`` or ``messages`` column, read in batches;
* a local Hugging Face dataset folder written by ``save_to_disk`` (needs ``datasets``; a
  ``DatasetDict`` contributes its ``train`` split), same columns.

Folders are searched recursively in sorted order. :func:`iter_pieces` yields :class:`Piece`
objects: a text block or a chat, and whether it ends its document.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
BLOCK_CHARS = 4 << 20  # text files are read in blocks of about this many characters

Messages = list[dict[str, Any]]


class DataError(ValueError):
    """Training data is missing, unreadable, empty or malformed; the message names the file."""


@dataclass(frozen=True)
class Piece:
    """A text block (``str``) or a chat (``list`` of messages); ``end`` closes its document."""

    content: str | Messages
    end: bool = True


def file_kind(path: str) -> str | None:
    """``"text"``, ``"jsonl"``, ``"parquet"``, ``"hf"`` (a saved dataset folder) or None."""
    if os.path.isdir(path):
        marker = ("dataset_info.json", "state.json", "dataset_dict.json")
        return "hf" if any(os.path.isfile(os.path.join(path, m)) for m in marker) else None
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if path.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def data_files(paths: Sequence[str]) -> list[str]:
    """The data files and dataset folders named by ``paths`` (folders searched recursively)."""
    if not paths:
        raise DataError("no data paths given")
    found: list[str] = []
    for path in paths:
        if not os.path.exists(path):
            raise DataError(f"data path {path} does not exist")
        if os.path.isdir(path) and file_kind(path) is None:
            inside = _search(path)
            if not inside:
                raise DataError(f"data folder {path} has no .txt/.jsonl/.parquet files or saved datasets")
            found.extend(inside)
        elif file_kind(path) is None:
            raise DataError(f"data file {path}: unknown type (use .txt, .jsonl, .parquet, "
                            "optionally .gz, or a saved Hugging Face dataset folder)")
        else:
            found.append(path)
    return found


def _search(folder: str) -> list[str]:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for d in list(dirs):
            if file_kind(os.path.join(root, d)) == "hf":
                found.append(os.path.join(root, d))
                dirs.remove(d)
        found.extend(os.path.join(root, n) for n in sorted(names) if file_kind(os.path.join(root, n)))
    return sorted(found)


def _open_text(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _record(record: Any, where: str) -> Piece | None:
    """The piece of one JSON/Parquet/dataset record; None for an empty one."""
    if isinstance(record, dict):
        messages = record.get("messages")
        if messages is not None:
            return Piece(_check_messages(messages, where)) if messages else None
        text = record.get("text")
        if isinstance(text, str):
            return Piece(text) if text.strip() else None
    raise DataError(f"{where}: expected an object with a string 'text' field or a 'messages' list")


def _check_messages(messages: Any, where: str) -> Messages:
    ok = isinstance(messages, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    )
    if not ok:
        raise DataError(f"{where}: 'messages' must be a list of {{'role': str, 'content': str}}")
    return messages


def _text_pieces(path: str) -> Iterator[Piece]:
    """A text file as blocks of about ``BLOCK_CHARS`` characters cut after a newline."""
    with _open_text(path) as fh:
        pending = ""
        while True:
            chunk = fh.read(BLOCK_CHARS)
            if not chunk:
                break
            pending += chunk
            while len(pending) >= BLOCK_CHARS:
                cut = pending.rfind("\n", 0, BLOCK_CHARS) + 1 or BLOCK_CHARS  # no newline: cut anyway
                yield Piece(pending[:cut], end=False)
                pending = pending[cut:]
        yield Piece(pending, end=True)


def _jsonl_pieces(path: str) -> Iterator[Piece]:
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            piece = _record(record, f"{path}:{lineno}")
            if piece is not None:
                yield piece


def _table_rows(batches, path: str) -> Iterator[Piece]:
    for batch in batches:
        columns = set(batch.column_names)
        if not columns & {"text", "messages"}:
            raise DataError(f"{path}: needs a 'text' or 'messages' column, found {sorted(columns)}")
        for row in batch.to_pylist():
            piece = _record({k: v for k, v in row.items() if k in ("text", "messages")}, path)
            if piece is not None:
                yield piece


def _parquet_pieces(path: str) -> Iterator[Piece]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"reading {path} needs pyarrow (pip install 'hymba[train]')") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several error types for bad files
        raise DataError(f"cannot read {path} as Parquet: {exc}") from None
    columns = [c for c in ("text", "messages") if c in pf.schema_arrow.names]
    if not columns:
        raise DataError(f"{path}: needs a 'text' or 'messages' column, found {pf.schema_arrow.names}")
    yield from _table_rows(pf.iter_batches(batch_size=1024, columns=columns), path)


def _hf_pieces(path: str) -> Iterator[Piece]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"reading the dataset folder {path} needs datasets (pip install 'hymba[train]')") from None
    try:
        ds = datasets.load_from_disk(path)
    except Exception as exc:  # datasets raises several error types for bad folders
        raise DataError(f"cannot load the dataset folder {path}: {exc}") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: the dataset has no 'train' split (splits: {', '.join(ds)})")
        ds = ds["train"]
    yield from _table_rows(ds.with_format("arrow").iter(batch_size=1024), path)


_READERS = {"text": _text_pieces, "jsonl": _jsonl_pieces, "parquet": _parquet_pieces, "hf": _hf_pieces}


def iter_pieces(paths: Sequence[str]) -> Iterator[Piece]:
    """Every piece of every document of ``paths``, in order (empty documents skipped)."""
    for path in data_files(paths):
        try:
            yield from _READERS[file_kind(path)](path)
        except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from None


def iter_documents(paths: Sequence[str]) -> Iterator[str | Messages]:
    """Whole documents: a text (the pieces of a text file joined) or a chat's messages."""
    parts: list[str] = []
    for piece in iter_pieces(paths):
        if isinstance(piece.content, list):
            yield piece.content
            continue
        parts.append(piece.content)
        if piece.end:
            text = "".join(parts)
            parts = []
            if text.strip():
                yield text
