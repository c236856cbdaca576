"""A small byte-level BPE tokenizer folder for tests (shared by the tokenizer and CLI tests)."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# The released Hymba chat template, restated (hymba-architecture.md §5).
CHAT_TEMPLATE = (
    "{{'<extra_id_0>System'}}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'\n' + message['content'].strip()}}{% endif %}{% endfor %}{{'\n\n'}}"
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '<extra_id_1>User\n' + message['content'].strip() + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<extra_id_1>Assistant\n' + message['content'].strip() + '\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<extra_id_1>Assistant\n' }}{% endif %}"
)


def write_tokenizer(folder: Path) -> Tokenizer:
    """Train a 300-entry BPE (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``[PAD]`` 3) and write
    ``tokenizer.json`` and ``tokenizer_config.json`` (BOS added, the chat template) to ``folder``."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "[PAD]"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["hello world, the quick brown fox jumps over the lazy dog"] * 20, trainer)
    tok.save(str(folder / "tokenizer.json"))
    config = dict(bos_token="<s>", eos_token="</s>", pad_token="[PAD]", add_bos_token=True,
                  chat_template=CHAT_TEMPLATE)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return tok


def write_tiny_checkpoint(folder: Path) -> Path:
    """A `tiny`-preset checkpoint with this tokenizer in ``folder`` (random weights, seed 0, the
    embeddings scaled up so that generation does not just repeat one token)."""
    import torch

    from hymba import HymbaConfig, HymbaForCausalLM

    tok = write_tokenizer(folder)
    torch.manual_seed(0)
    model = HymbaForCausalLM(HymbaConfig.from_preset("tiny", vocab_size=tok.get_vocab_size()))
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0, 1)
    model.save_pretrained(folder)
    return folder
