"""Recall benchmarks: task construction, scoring and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from hymba import HymbaForCausalLM, InputError
from hymba.cli import main
from hymba.eval import recall


def test_mqar_layout():
    vocab = recall.SyntheticVocab(320, 16, 16)
    batch = recall.mqar_batch(5, 48, vocab, pairs=4, queries=3, seed=0)
    assert batch.input_ids.shape == (5, 48) and batch.answer_pos.shape == (5, 3)
    for row, pos in zip(batch.input_ids.tolist(), batch.answer_pos.tolist()):
        assert row[0] == 1
        store = dict(zip(row[1:9:2], row[2:9:2]))
        assert set(store) <= set(vocab.keys) and set(store.values()) <= set(vocab.values)
        assert all(t in vocab.filler for t in row[9:48 - 6])
        for p in pos:  # the answer is the value stored with the queried key
            assert store[row[p - 1]] == row[p]
    labels = batch.labels()
    assert (labels != -100).sum() == 15
    assert recall.mqar_batch(5, 48, vocab, 4, 3, seed=0).input_ids.equal(batch.input_ids)


def test_needle_depth_places_the_pair():
    vocab = recall.SyntheticVocab(320, 16, 16)
    for depth, where in ((0.0, 1), (1.0, 64 - 2 - 2)):
        row = recall.mqar_batch(1, 64, vocab, 1, 1, seed=1, needle_depth=depth).input_ids[0].tolist()
        assert row[where] in vocab.keys and row[-2] == row[where] and row[-1] == row[where + 1]


class Oracle(torch.nn.Module):
    """Predicts, after a key, the value that followed the key's first occurrence."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids, attention_mask=None, logits_to_keep=0):
        logits = torch.zeros(*ids.shape, self.vocab_size)
        for b, row in enumerate(ids.tolist()):
            first = {}
            for t, tok in enumerate(row):
                if tok in first:
                    logits[b, t, row[first[tok] + 1]] = 1.0
                else:
                    first[tok] = t
        return type("Out", (), {"logits": logits[:, -logits_to_keep:] if logits_to_keep else logits})


def test_scoring_with_an_oracle():
    vocab = recall.SyntheticVocab(320, 64, 64)
    rows = recall.mqar_accuracy(Oracle(320), vocab, [40, 100], samples=6, pairs=4)
    assert [r["accuracy"] for r in rows] == [1.0, 1.0] and rows[0]["per_query"] == [1.0] * 4
    rows = recall.needle_accuracy(Oracle(320), vocab, [30], depths=(0.0, 0.5), samples=3)
    assert rows[0]["per_depth"] == {"0.0": 1.0, "0.5": 1.0}


def test_bad_settings():
    with pytest.raises(InputError, match="too small"):
        recall.SyntheticVocab(100, 64, 64)
    with pytest.raises(InputError, match="too short"):
        recall.mqar_batch(1, 10, recall.SyntheticVocab(320), pairs=8)


def test_passkey_prompts(tiny_checkpoint):
    from hymba import load_tokenizer

    tok = load_tokenizer(tiny_checkpoint)
    pairs = recall.passkey_pairs(tok, 120, 0.5, samples=2, seed=0)
    for prompt, answer in pairs:
        assert prompt[0] == tok.bos_token_id and abs(len(prompt) - 120) < 20
        assert tok.decode(answer).strip().isdigit()
    torch.manual_seed(0)
    rows = recall.passkey_accuracy(HymbaForCausalLM(tiny_config()).eval(), tok, [60], depths=(0.5,), samples=2)
    assert rows[0]["task"] == "passkey" and 0 <= rows[0]["accuracy"] <= 1


def test_cli(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "recall.json"
    args = ["bench", "recall", "--model", str(tiny_checkpoint), "--lengths", "40,80", "--samples", "4",
            "--pairs", "4", "--num-keys", "16", "--num-values", "16", "--task", "mqar", "niah", "passkey",
            "--depths", "0,1", "--device", "cpu", "--json", str(out)]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert data["window"] == 8
    assert [(r["task"], r["length"]) for r in data["rows"]] == [
        ("mqar", 40), ("mqar", 80), ("niah", 40), ("niah", 80), ("passkey", 40), ("passkey", 80)]
    assert "beyond" in capsys.readouterr().out
    assert main(["bench", "recall", "--preset", "tiny", "--task", "passkey", "--lengths", "40"]) == 2
    capsys.readouterr()
    assert main(["bench", "recall", "--preset", "tiny", "--task", "mqar", "--json", str(tmp_path / "no" / "r.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
