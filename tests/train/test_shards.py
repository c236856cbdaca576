"""Data sources (parquet, saved datasets, chats), chat loss masks and memory-mapped token shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hymba import load_tokenizer
from hymba.cli import main
from hymba.train import sources
from hymba.train.bpe import bundled_data_dir
from hymba.train.data import load_rows
from hymba.train.encoding import CHAT_TEMPLATE, DocumentEncoder, chat_segments
from hymba.train.shards import ShardWriter, open_shards, split_labels, write_shards
from hymba.train.sources import DataError, Piece, iter_documents, iter_pieces

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Who wrote Hamlet?"},
    {"role": "assistant", "content": "Shakespeare."},
    {"role": "user", "content": "And Paradise Lost?"},
    {"role": "assistant", "content": "Milton."},
]


@pytest.fixture(scope="module")
def tokenizer():
    tok = load_tokenizer(bundled_data_dir())
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_chat_segments_train_only_on_replies(tokenizer):
    segments = chat_segments(tokenizer, CHAT)
    assert "".join(t for t, _ in segments) == tokenizer.apply_chat_template(CHAT, add_generation_prompt=False)
    assert [t for t, reply in segments if reply] == ["Shakespeare.\n", "Milton.\n"]
    enc = DocumentEncoder(tokenizer).encode_chat(CHAT)
    assert enc.ids[-1] == tokenizer.eos_token_id and enc.mask[-1]  # the reply ends with EOS
    trained = tokenizer.decode(enc.ids[enc.mask][:-1].tolist())
    assert trained == "Shakespeare.\nMilton.\n"


def test_chat_needs_a_template():
    tok = load_tokenizer(bundled_data_dir())
    tok.chat_template = None
    with pytest.raises(DataError, match="chat template"):
        DocumentEncoder(tok).encode_chat(CHAT)


def test_bundled_tokenizer_ships_the_chat_template():
    # `hymba chat` on the default run's final/ folder renders turns with this template
    assert load_tokenizer(bundled_data_dir()).chat_template == CHAT_TEMPLATE


def test_long_text_file_streams_in_blocks(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setattr(sources, "BLOCK_CHARS", 64)
    text = "".join(f"line {i} of a long file\n" for i in range(40))
    (tmp_path / "big.txt").write_text(text)
    pieces = list(iter_pieces([str(tmp_path / "big.txt")]))
    assert len(pieces) > 5 and [p.end for p in pieces].count(True) == 1
    assert all(p.content.endswith("\n") for p in pieces[:-1])
    assert list(iter_documents([str(tmp_path)])) == [text]
    parts = list(DocumentEncoder(tokenizer).encode(pieces))
    ids = np.concatenate([p.ids for p in parts])
    assert (ids == tokenizer.eos_token_id).sum() == 1 and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids.tolist()) == text


def test_parquet_and_saved_dataset(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    pq.write_table(pa.table({"text": ["alpha", "", "beta"], "id": [1, 2, 3]}), tmp_path / "a.parquet")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"messages": [CHAT]})}).save_to_disk(
        str(tmp_path / "chats"))
    docs = list(iter_documents([str(tmp_path)]))
    assert docs == ["alpha", "beta", CHAT]
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="'text' or 'messages' column"):
        list(iter_documents([str(tmp_path / "bad.parquet")]))


def test_bad_records(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"messages": [{"role": "user"}]}) + "\n")
    with pytest.raises(DataError, match=r"m.jsonl:1: 'messages' must be"):
        list(iter_documents([str(tmp_path / "m.jsonl")]))


def _parts(tokenizer):
    enc = DocumentEncoder(tokenizer)
    return list(enc.encode([Piece(f"document number {i} " * 3) for i in range(30)] + [Piece(CHAT)] * 3))


def test_shards_round_trip_with_masks(tmp_path, tokenizer):
    parts = _parts(tokenizer)
    stream = np.concatenate([p.ids for p in parts])
    mask = np.concatenate([np.ones(len(p.ids), bool) if p.mask is None else p.mask for p in parts])
    meta = write_shards(parts, tokenizer, str(tmp_path / "tok"), ["x"], shard_tokens=100)
    assert meta["tokens"] == len(stream) and meta["documents"] == 33
    assert meta["trained_tokens"] == int(mask.sum())
    assert meta["shards"][0]["mask"] is None and meta["shards"][-1]["mask"] is not None
    train, val = open_shards(str(tmp_path / "tok"), tokenizer, seq_len=10, val_fraction=0.25)
    rows_per_shard = [s["tokens"] // 10 for s in meta["shards"]]
    assert len(train) + len(val) == sum(rows_per_shard) and len(val) == sum(rows_per_shard) // 4
    # Every row is a contiguous, shard-aligned slice of the stream, negated where not trained on.
    signed = np.where(mask, stream, -1 - stream)
    starts, offset = [], 0
    for s in meta["shards"]:
        starts += [offset + 10 * r for r in range(s["tokens"] // 10)]
        offset += s["tokens"]
    expected = [signed[a : a + 10] for a in starts]
    got = [r.numpy() for r in train[list(range(len(train)))]] + [r.numpy() for r in val[0 : len(val)]]
    assert sorted(map(tuple, got)) == sorted(map(tuple, expected))
    assert np.array_equal(val[1].numpy(), expected[7])
    ids, labels = split_labels(val[0 : len(val)])
    assert ids.min() >= 0 and (labels == -100).any() and torch.equal(labels[labels != -100], ids[labels != -100])


def test_shard_errors(tmp_path, tokenizer):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(DataError, match="not empty"):
        ShardWriter(str(tmp_path / "busy"), tokenizer)
    with pytest.raises(DataError, match="empty"):
        write_shards([], tokenizer, str(tmp_path / "none"), ["nothing"])
    write_shards(_parts(tokenizer), tokenizer, str(tmp_path / "tok"), ["x"])
    other = load_tokenizer(bundled_data_dir())
    other.tokenizer.add_tokens(["<new>"])
    with pytest.raises(DataError, match="different tokenizer"):
        open_shards(str(tmp_path / "tok"), other, 10, 0.1)
    with pytest.raises(DataError, match="too few"):
        open_shards(str(tmp_path / "tok"), tokenizer, 100_000, 0.1)
    text = tmp_path / "more.txt"
    text.write_text("More text.")
    with pytest.raises(DataError, match="give it as the only data path"):
        load_rows([str(tmp_path / "tok"), str(text)], tokenizer, 10, 0.1)


def test_tokenize_cli(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("To be, or not to be, that is the question.\n" * 50)
    assert main(["tokenize", "--data", str(tmp_path / "a.txt"), "--out", str(tmp_path / "tok")]) == 0
    assert "1 documents" in capsys.readouterr().out
    assert main(["tokenize", "--data", str(tmp_path / "a.txt"), "--out", str(tmp_path / "tok")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_tokenizer_train_cli(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("the cat sat on the mat\n" * 100)
    (tmp_path / "c.jsonl").write_text(json.dumps({"messages": CHAT}) + "\n")
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--data", str(tmp_path), "--vocab-size", "300", "--out", str(out)]) == 0
    tok = load_tokenizer(out)
    assert len(tok) <= 300 and tok.eos_token_id == 2 and tok.chat_template == CHAT_TEMPLATE
    assert tok.decode(tok.encode("the cat sat")) == "the cat sat"
    assert len(tok.encode("the cat sat on the mat")) < 10  # merges were learned
    assert main(["tokenizer", "train", "--data", str(tmp_path), "--out", str(out)]) == 2
    assert "already holds" in capsys.readouterr().err
