"""``hymba tokenizer train``: a byte-level BPE tokenizer for from-scratch training runs."""

from __future__ import annotations

import argparse
import os

from . import CLIError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train a BPE tokenizer",
                       description="Tokenizer tools for from-scratch runs.")
    tasks = p.add_subparsers(dest="tokenizer_task", metavar="TASK", required=True)
    t = tasks.add_parser(
        "train", help="train a byte-level BPE tokenizer on a corpus",
        description="Train a byte-level BPE tokenizer (HF tokenizers) with <unk>=0, <s>=1, </s>=2, "
                    "[PAD]=3 and the Hymba chat template; writes tokenizer.json and "
                    "tokenizer_config.json for `hymba train --tokenizer DIR`.",
    )
    t.add_argument("--data", nargs="+", metavar="PATH", required=True,
                   help=".txt / .jsonl / .parquet files (optionally .gz), folders or saved datasets")
    t.add_argument("--vocab-size", type=int, default=2048, help="entries, specials included (default 2048)")
    t.add_argument("--min-frequency", type=int, default=2, help="least count of a merged pair (default 2)")
    t.add_argument("--out", metavar="DIR", required=True, help="folder for the tokenizer files")
    t.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from ..train.bpe import train_bpe
    from ..train.encoding import CHAT_TEMPLATE
    from ..train.sources import DataError, iter_pieces

    if os.path.isfile(os.path.join(args.out, "tokenizer.json")):
        raise CLIError(f"{args.out} already holds a tokenizer.json; choose a new folder")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CLIError(f"output path {args.out} exists and is not a folder")

    chars = [0]

    def texts():
        for piece in iter_pieces(args.data):
            for text in [piece.content] if isinstance(piece.content, str) else [m["content"] for m in piece.content]:
                chars[0] += len(text.strip())
                yield text

    try:
        tokenizer = train_bpe(texts(), args.vocab_size, args.min_frequency)
    except DataError as exc:
        raise CLIError(str(exc)) from None
    except ValueError as exc:  # a vocabulary too small for the byte alphabet
        raise CLIError(str(exc)) from None
    if not chars[0]:
        raise CLIError(f"the corpus is empty (no text in {', '.join(args.data)})")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save(args.out)
    print(f"trained a {len(tokenizer)}-entry byte-level BPE tokenizer -> {args.out}")
    return 0
