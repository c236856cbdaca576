"""``--quantize`` on ``hymba generate`` / ``hymba chat`` and in the shared model loader."""

from __future__ import annotations

import argparse
import io
import sys

import pytest
import torch
from tokenkit import write_tiny_checkpoint

from hymba import HymbaForCausalLM, load_tokenizer
from hymba.cli import main
from hymba.cli._common import add_model_args, add_quantize_arg, add_runtime_args, load_model

pytest.importorskip("torchao.quantization")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_generate_with_quantized_weights(checkpoint, capsys, mode):
    args = ["generate", "--model", str(checkpoint), "--prompt", "the quick", "--max-new-tokens", "5",
            "--quantize", mode]
    assert main(args) == 0
    text = capsys.readouterr().out
    model = HymbaForCausalLM.from_pretrained(checkpoint, quantize=mode).eval()
    tok = load_tokenizer(checkpoint)
    ids = torch.tensor([tok.encode("the quick")])
    new = model.generate(ids, max_new_tokens=5, eos_token_id=tok.eos_token_id)[0, ids.shape[1]:].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    assert text == tok.decode(new) + "\n"


def test_chat_takes_quantize(checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    assert main(["chat", "--model", str(checkpoint), "--max-new-tokens", "3", "--quantize", "int8"]) == 0


def test_bad_quantize_choice_is_argparse_error(checkpoint, capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(checkpoint), "--prompt", "x", "--quantize", "int2"])
    assert "invalid choice: 'int2'" in capsys.readouterr().err


def test_missing_torchao_is_one_line(checkpoint, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    assert main(["generate", "--model", str(checkpoint), "--prompt", "x", "--quantize", "int8"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs torchao" in err and "\n" not in err


def test_any_command_using_the_shared_loader_can_quantize(checkpoint):
    """A command that adds ``--quantize`` (as a future ``hymba serve`` would) and loads through
    load_model gets the quantized model, from a folder or a preset."""
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    add_runtime_args(parser)
    add_quantize_arg(parser)
    model = load_model(parser.parse_args(["--model", str(checkpoint), "--quantize", "int8", "--device", "cpu"]))
    assert model.quantization == "int8"
    model = load_model(parser.parse_args(["--preset", "tiny", "--quantize", "int4", "--device", "cpu"]))
    assert model.quantization == "int4" and not model.training
    assert load_model(parser.parse_args(["--model", str(checkpoint), "--device", "cpu"])).quantization is None
