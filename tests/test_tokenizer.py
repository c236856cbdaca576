"""The tokenizer helper: loading a checkpoint folder's files, specials, chat template."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models
from tokenkit import write_tokenizer

from hymba import TokenizerError, load_tokenizer
from hymba.tokenizer import HymbaTokenizer


@pytest.fixture
def folder(tmp_path):
    write_tokenizer(tmp_path)
    return tmp_path


def test_encode_decode_and_specials(folder):
    tok = load_tokenizer(folder)
    ids = tok.encode("hello world")
    assert ids[0] == tok.bos_token_id == 1
    assert tok.eos_token_id == 2 and tok.pad_token_id == 3
    assert tok.decode(ids) == "hello world"
    assert tok.encode("hello", add_bos=False)[0] != 1
    assert len(tok) >= 256


def test_chat_template_matches_released_rendering(folder):
    tok = load_tokenizer(folder)
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2+2?"},
    ]
    assert tok.apply_chat_template(messages) == (
        "<extra_id_0>System\nYou are a helpful assistant.\n\n<extra_id_1>User\nHi there\n"
        "<extra_id_1>Assistant\nHello!\n<extra_id_1>User\nWhat is 2+2?\n<extra_id_1>Assistant\n"
    )
    ids = tok.apply_chat_template(messages, tokenize=True)
    assert ids[0] != tok.bos_token_id  # the template adds no BOS


def test_save_and_reload(folder, tmp_path):
    tok = load_tokenizer(folder)
    tok.save(tmp_path / "copy")
    again = load_tokenizer(tmp_path / "copy")
    assert again.encode("the lazy dog") == tok.encode("the lazy dog")
    assert again.chat_template == tok.chat_template


def test_errors(tmp_path, folder):
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "sp").mkdir()
    (tmp_path / "sp" / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "sp")
    (folder / "tokenizer.json").write_text("{broken")
    with pytest.raises(TokenizerError, match="cannot read"):
        load_tokenizer(folder)
    tok = HymbaTokenizer(Tokenizer(models.BPE()), {})
    with pytest.raises(TokenizerError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])


def test_text_that_is_not_utf8_is_refused(folder):
    tok = load_tokenizer(folder)
    not_utf8 = b"caf\xe9".decode("utf-8", "surrogateescape")  # how Python reads such argv/stdin
    with pytest.raises(TokenizerError, match="not valid UTF-8"):
        tok.encode(not_utf8)
    with pytest.raises(TokenizerError, match="str"):
        tok.encode(b"cafe")
