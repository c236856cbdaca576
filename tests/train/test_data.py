from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from hymba import load_tokenizer
from hymba.train.bpe import SPECIAL_TOKENS, bundled_data_dir, train_bpe
from hymba.train.data import (
    BatchStream,
    DataError,
    PackedData,
    iter_documents,
    pack,
    tokenize_documents,
    unigram_entropy,
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(bundled_data_dir())


def test_bundled_tokenizer_and_corpus(tokenizer):
    assert len(tokenizer) == 2048
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    text = "Thou art more lovely and more temperate:\n  Rough winds do shake"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    with gzip.open(f"{bundled_data_dir()}/corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        first = json.loads(fh.readline())
    assert first["author"] and len(first["text"]) > 10_000


def test_train_bpe_roundtrip():
    tok = train_bpe(["hello world, hello there"] * 20, vocab_size=300)
    assert len(tok) <= 300 and tok.eos_token_id == 2
    assert tok.decode(tok.encode("hello wörld")) == "hello wörld"  # byte-level: nothing is unknown


def test_documents_from_text_jsonl_gz_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("first document")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"text": "second"}) + "\n\n" + json.dumps({"text": "third"}) + "\n")
    (tmp_path / "ignored.bin").write_bytes(b"\0")
    assert list(iter_documents([str(tmp_path)])) == ["first document", "second", "third"]


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", "{not json\n", "not valid JSON"),
    ("nofield.jsonl", '{"body": "x"}\n', "'text' field"),
    ("data.csv", "a,b\n", "unknown type"),
])
def test_bad_files(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        list(iter_documents([str(tmp_path / name)]))


def test_missing_path():
    with pytest.raises(DataError, match="does not exist"):
        list(iter_documents(["/no/such/corpus.txt"]))


def test_packing_puts_eos_after_every_document(tokenizer):
    docs = ["one two", "three", "four five six"]
    tokens = tokenize_documents(docs, tokenizer)
    eos = tokenizer.eos_token_id
    ends = np.flatnonzero(tokens == eos)
    assert len(ends) == 3 and ends[-1] == len(tokens) - 1
    pieces = np.split(tokens, ends[:-1] + 1)
    assert [tokenizer.decode(p.tolist()) for p in pieces] == docs
    rows = pack(tokens, 4)
    assert rows.shape == (len(tokens) // 4, 4)
    assert np.array_equal(rows.reshape(-1), tokens[: rows.size])


def test_validation_split_is_disjoint_and_deterministic():
    tokens = np.arange(1000, dtype=np.int32)
    data = PackedData.build(tokens, 10, val_fraction=0.1)
    assert len(data.train) == 90 and len(data.val) == 10
    assert not set(data.train[:, 0].tolist()) & set(data.val[:, 0].tolist())
    with pytest.raises(DataError, match="too few"):
        PackedData.build(tokens[:15], 10, 0.1)


def test_batches_are_reproducible_and_sharded_by_rank():
    rows = torch.arange(50).reshape(25, 2)
    stream = BatchStream(rows, batch_size=4, seed=3)
    again = BatchStream(rows, batch_size=4, seed=3)
    seen = torch.cat([stream.batch(k) for k in range(6)])[:, 0]
    assert torch.equal(seen, torch.cat([again.batch(k) for k in range(6)])[:, 0])
    assert len(set(seen[:24].tolist())) == 24  # one epoch without repeats
    shards = [BatchStream(rows, 4, 3, rank=r, world_size=2).batch(5) for r in (0, 1)]
    glob = stream.batch(5)
    assert torch.equal(shards[0], glob[0::2]) and torch.equal(shards[1], glob[1::2])


def test_unigram_entropy():
    assert unigram_entropy(torch.tensor([[0, 1, 2, 3]]), 8) == pytest.approx(np.log(4))
