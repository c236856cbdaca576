"""A tiny random Hymba checkpoint with a byte-level BPE tokenizer, for the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hymba import HymbaConfig, HymbaForCausalLM, HymbaTokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hymba runs attention heads and state space heads in parallel.",
    "Question: what colour is the sky? Answer: blue.",
    "Meta tokens are prepended to every sequence.",
]


def tiny_config(**overrides) -> HymbaConfig:
    base = dict(
        vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=8, global_attn_idx=[0, 3],
        kv_reuse_group=[[1, 2]], num_memory_tokens=4, mamba_dt_rank=4,
        max_position_embeddings=256, orig_max_position_embeddings=256, torch_dtype="float32",
    )
    return HymbaConfig(**{**base, **overrides})


def byte_bpe_tokenizer(vocab_size: int = 320) -> HymbaTokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return HymbaTokenizer(tok, {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>",
                                "add_bos_token": True})


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A saved random tiny model + tokenizer folder."""
    folder = tmp_path_factory.mktemp("tiny-hymba")
    torch.manual_seed(0)
    HymbaForCausalLM(tiny_config()).eval().save_pretrained(folder)
    byte_bpe_tokenizer().save(folder)
    return folder
