"""``hymba cache-size``, ``hymba generate`` and the ``hymba chat`` REPL."""

from __future__ import annotations

import io
import json
import re

import pytest
import torch
from tokenkit import write_tiny_checkpoint

from hymba import HymbaConfig, HymbaForCausalLM, load_tokenizer
from hymba.cli import main
from hymba.cli.chat import repl
from hymba.inference.accounting import cache_bytes
from hymba.inference.cache import HybridCache


def test_cache_size_reproduces_the_paper(tmp_path, capsys):
    out_json = tmp_path / "cache.json"
    assert main(["cache-size", "--preset", "hymba-1.5b", "--seq", "8000", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    total = float(re.search(r"total per request\s+([\d.]+) MB", out).group(1))
    assert abs(total - 78.6) <= 1.0
    assert "917.50 MB" in out and "262.14 MB" in out  # the paper's 918 and 262 MB baselines
    result = json.loads(out_json.read_text())
    assert abs(result["baselines"]["Llama-3.2-3B"]["ratio"] - 11.67) < 0.2


@pytest.mark.parametrize("preset", ["tiny", "hymba-1.5b"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_cache_allocates_what_the_accounting_counts(preset, dtype):
    config = HymbaConfig.from_preset(preset)
    for batch, length in ((1, 8000), (3, 17)):
        cache = HybridCache(config, batch, length, dtype=dtype, device="meta", ssm_dtype=torch.float32)
        parts = cache.nbytes()
        assert cache.allocated_bytes() == parts["total"]
        assert parts == cache_bytes(config, length, batch=batch, dtype_bytes=dtype.itemsize, ssm_dtype_bytes=4)
        meta = sum(t.numel() * t.element_size() for t in [*cache.meta_k.values(), *cache.meta_v.values()])
        assert meta == parts["meta_kv"]


def test_info_and_cache_size_print_the_same_total(capsys):
    assert main(["info", "--preset", "hymba-1.5b", "--seq", "8000"]) == 0
    info = float(re.search(r"cache per request at 8000 tokens .*?: ([\d.]+) MB", capsys.readouterr().out).group(1))
    assert main(["cache-size", "--preset", "hymba-1.5b", "--seq", "8000"]) == 0
    size = float(re.search(r"total per request\s+([\d.]+) MB", capsys.readouterr().out).group(1))
    assert info == size


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_generate_streams_the_continuation(checkpoint, capsys):
    args = ["generate", "--model", str(checkpoint), "--prompt", "the quick", "--max-new-tokens", "6"]
    assert main(args) == 0
    text = capsys.readouterr().out
    model = HymbaForCausalLM.from_pretrained(checkpoint).eval()
    tok = load_tokenizer(checkpoint)
    ids = torch.tensor([tok.encode("the quick")])
    new = model.generate(ids, max_new_tokens=6, eos_token_id=tok.eos_token_id)[0, ids.shape[1] :].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    assert text == tok.decode(new) + "\n"
    assert main(args + ["--do-sample", "--seed", "3", "--top-k", "5", "--chat"]) == 0
    assert main(args + ["--top-p", "2"]) == 2
    assert "top_p" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--do-sample", "--top-p", "0"], "top_p must be in (0, 1]"),
    (["--device", "foo"], "--device 'foo' is not a device"),
    (["--prompt", b"caf\xe9".decode("utf-8", "surrogateescape")], "the prompt is not valid UTF-8"),
])
def test_generate_bad_input_is_one_line(checkpoint, capsys, extra, message):
    args = ["generate", "--model", str(checkpoint), "--prompt", "the quick", "--max-new-tokens", "3", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_generate_reads_the_prompt_from_stdin_as_bytes(checkpoint, capsys, monkeypatch):
    args = ["generate", "--model", str(checkpoint), "--prompt", "-", "--max-new-tokens", "2"]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"the quick")))
    assert main(args) == 0
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9"), encoding="utf-8"))
    assert main(args) == 2
    assert "the prompt is not valid UTF-8" in capsys.readouterr().err


def test_generate_dtype_choices(checkpoint, capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(checkpoint), "--prompt", "x", "--dtype", "int8"])
    assert "invalid choice: 'int8'" in capsys.readouterr().err


def test_chat_repl_keeps_history_resets_and_exits_on_eof(checkpoint, monkeypatch):
    import hymba.inference as generation

    model = HymbaForCausalLM.from_pretrained(checkpoint).eval()
    tok = load_tokenizer(checkpoint)
    prompts = []
    original = generation.stream
    monkeypatch.setattr(generation, "stream", lambda m, t, ids, **kw: prompts.append(t.decode(ids)) or original(m, t, ids, **kw))
    stdin = io.StringIO("hello\nthe fox\n\n/reset\nlazy dog\n")  # then EOF (Ctrl-D)
    stdout = io.StringIO()
    history = repl(model, tok, stdin, stdout, max_new_tokens=5)
    assert len(prompts) == 3
    assert "User\nhello" in prompts[1] and "User\nthe fox" in prompts[1] and "Assistant\n" in prompts[1]
    assert "hello" not in prompts[2] and "User\nlazy dog" in prompts[2]  # /reset cleared the history
    assert [m["role"] for m in history] == ["user", "assistant"] and history[0]["content"] == "lazy dog"
    shown = stdout.getvalue()
    assert shown.count("hymba> ") == 3 and "(conversation cleared)" in shown
    # /exit ends the loop too, and an over-long turn is reported without ending the chat
    stdout = io.StringIO()
    history = repl(model, tok, io.StringIO("x " * 3000 + "\n/exit\nnot read\n"), stdout, max_new_tokens=5)
    assert history == [] and "error:" in stdout.getvalue() and "maximum" in stdout.getvalue()
