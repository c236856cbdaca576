"""``hymba export --from CHECKPOINT --out DIR``: a training checkpoint in the released format."""

from __future__ import annotations

import argparse
import os

from . import CLIError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write a training checkpoint (sharded or not) in the released format",
        description="Write a checkpoint of 'hymba train' as one released-format folder (config.json, "
                    "model.safetensors, tokenizer files) that 'hymba generate --model' and "
                    "from_pretrained read. A sharded checkpoint (an FSDP run's, written by every "
                    "rank) is gathered in this one process; no torchrun needed.")
    p.add_argument("--from", dest="source", metavar="CHECKPOINT", required=True,
                   help="a checkpoint folder, or a run folder (its newest checkpoint)")
    p.add_argument("--out", metavar="DIR", required=True, help="the folder to write (replaced if it exists)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.checkpointing import export_checkpoint

    if not os.path.isdir(args.source):
        raise CLIError(f"checkpoint folder {args.source} does not exist")
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise CLIError(f"output path {out} exists and is not a folder")
    source = export_checkpoint(args.source, out)
    print(f"exported {source} to {out}")
    return 0
