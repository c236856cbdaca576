"""Byte-level BPE tokenizers for from-scratch runs, trained with HF ``tokenizers``.

Special tokens follow the released Llama-style layout: ``<unk>`` = 0, ``<s>`` = 1, ``</s>`` = 2,
then ``[PAD]`` = 3. Byte-level pre-tokenisation means every string round-trips exactly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..tokenizer import HymbaTokenizer

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "[PAD]")


def train_bpe(texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2) -> HymbaTokenizer:
    """A byte-level BPE tokenizer of ``vocab_size`` entries (specials included) trained on ``texts``."""
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size {vocab_size} is below the {len(SPECIAL_TOKENS) + 256} "
                         "entries of the specials and the byte alphabet")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "[PAD]", "unk_token": "<unk>",
              "add_bos_token": False, "model_max_length": 2048}
    return HymbaTokenizer(tok, config)


BUNDLED_CORPUS = "corpus.jsonl.gz"


def bundled_data_dir() -> str:
    """The folder of the corpus and tokenizer shipped with the package."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
