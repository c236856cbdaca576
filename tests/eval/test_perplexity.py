"""Sliding-window perplexity and batched pair scoring."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_config

from hymba import HymbaForCausalLM, InputError
from hymba.cli import main
from hymba.eval.perplexity import read_documents, token_perplexity
from hymba.eval.scoring import score_pairs, sliding_windows


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HymbaForCausalLM(tiny_config()).eval()


@pytest.mark.parametrize("n,window,stride", [(10, 4, 2), (10, 4, 4), (9, 3, 1), (3, 8, 4), (40, 16, 5)])
def test_sliding_windows_score_every_token_once(n, window, stride):
    tokens = list(range(100, 100 + n))
    pairs = sliding_windows(tokens, window, stride)
    assert [t for _, cont in pairs for t in cont] == tokens[1:]
    for context, continuation in pairs:
        assert context and len(context) + len(continuation) - 1 <= window
        assert tokens[tokens.index(context[0]):][: len(context) + len(continuation)] == context + continuation
    # later windows keep window - stride tokens of context (as far as the document allows)
    for context, continuation in pairs[1:]:
        assert len(context) + len(continuation) - 1 == window or context[0] == tokens[0]


def test_full_window_matches_model_loss(model):
    torch.manual_seed(1)
    doc = torch.randint(3, 320, (30,)).tolist()
    result = token_perplexity(model, [doc], [30], window=64)
    ids = torch.tensor([doc])
    loss = model(ids, labels=ids).loss.item()
    assert result.tokens == 29
    assert result.loss == pytest.approx(loss, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(loss), rel=1e-5)
    assert result.bits_per_byte == pytest.approx(result.nll / math.log(2) / 30)


def test_batched_scores_equal_single(model):
    torch.manual_seed(2)
    pairs = [(torch.randint(3, 320, (c,)).tolist(), torch.randint(3, 320, (k,)).tolist())
             for c, k in [(1, 3), (17, 1), (5, 5), (40, 2), (2, 9)]]
    one = score_pairs(model, pairs, batch_size=1)
    many = score_pairs(model, pairs, batch_size=4, max_batch_tokens=100)
    for a, b in zip(one, many):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert (a.is_greedy, a.num_correct, a.num_tokens) == (b.is_greedy, b.num_correct, b.num_tokens)


def test_strided_windows_use_more_context(model):
    torch.manual_seed(3)
    doc = torch.randint(3, 320, (60,)).tolist()
    disjoint = token_perplexity(model, [doc], [60], window=16, stride=16)
    strided = token_perplexity(model, [doc], [60], window=16, stride=4)
    assert disjoint.tokens == strided.tokens == 59
    assert disjoint.nll != pytest.approx(strided.nll)


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="stride"):
        sliding_windows([1, 2, 3], 4, 5)
    with pytest.raises(InputError, match="does not exist"):
        read_documents([tmp_path / "missing.txt"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(InputError, match="'text'"):
        read_documents([bad])


def test_cli_ppl(tiny_checkpoint, tmp_path, capsys):
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["The sky is blue. " * 20, "Meta tokens."]))
    plain = tmp_path / "doc.txt"
    plain.write_text("The quick brown fox jumps over the lazy dog.")
    out = tmp_path / "ppl.json"
    assert main(["eval", "ppl", "--model", str(tiny_checkpoint), "--data", str(data), str(plain),
                 "--window", "32", "--stride", "8", "--device", "cpu", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["documents"] == 3 and result["window"] == 32 and result["stride"] == 8
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert "bits/byte" in capsys.readouterr().out
    assert main(["eval", "ppl", "--model", str(tiny_checkpoint), "--data", str(tmp_path / "nope.txt")]) == 2
    capsys.readouterr()
    for extra, message in ((["--window", "1"], "--window must be >= 2"),
                           (["--json", str(tmp_path / "no" / "x.json")], "does not exist"),
                           (["--data", str(tmp_path)], "is a folder")):
        argv = ["eval", "ppl", "--model", str(tiny_checkpoint), "--data", str(plain), *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
