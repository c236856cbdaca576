"""The tokenizer helper: loading a checkpoint folder's files, specials, chat template."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from hymba import TokenizerError, load_tokenizer
from hymba.tokenizer import HymbaTokenizer

# The released Hymba chat template, restated (hymba-architecture.md §5).
CHAT_TEMPLATE = (
    "{{'<extra_id_0>System'}}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'\n' + message['content'].strip()}}{% endif %}{% endfor %}{{'\n\n'}}"
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '<extra_id_1>User\n' + message['content'].strip() + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<extra_id_1>Assistant\n' + message['content'].strip() + '\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<extra_id_1>Assistant\n' }}{% endif %}"
)


@pytest.fixture
def folder(tmp_path):
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "[PAD]"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["hello world, the quick brown fox jumps over the lazy dog"] * 20, trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    config = dict(bos_token="<s>", eos_token="</s>", pad_token="[PAD]", add_bos_token=True,
                  chat_template=CHAT_TEMPLATE)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
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
