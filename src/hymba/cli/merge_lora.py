"""``hymba merge-lora``: merge a LoRA adapter into its base model and write a released-format
checkpoint (``config.json``, safetensors, tokenizer and generation config)."""

from __future__ import annotations

import argparse

from . import CLIError
from ._common import MODEL_HELP


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge-lora", help="merge a LoRA adapter into its base model (released-format output)",
        description="Merge a LoRA adapter (PEFT's format: adapter_config.json + adapter_model.safetensors, "
                    "as 'hymba train --lora' or PEFT on the transformers class save it) into its base "
                    "model: W + (alpha/r)·B·A for every adapted projection, computed in float32 and "
                    "saved in the base checkpoint's dtype. The output loads like any released checkpoint.",
    )
    p.add_argument("--base", metavar="DIR|ID",
                   help="the base model: " + MODEL_HELP + " (default: the folder the adapter names)")
    p.add_argument("--adapter", metavar="DIR", required=True, help="the adapter folder (e.g. RUN/final)")
    p.add_argument("--out", metavar="DIR", required=True, help="where to write the merged model")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.lora import LoraError, merge_lora

    try:
        out = merge_lora(args.base, args.adapter, args.out, overwrite=args.overwrite)
    except LoraError as exc:
        raise CLIError(str(exc)) from None
    print(f"merged model: {out}")
    return 0
