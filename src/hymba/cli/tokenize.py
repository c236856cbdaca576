"""``hymba tokenize``: pre-tokenise a corpus into memory-mapped token shards for training."""

from __future__ import annotations

import argparse
import os
import shutil

from . import CLIError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokenize", help="pre-tokenise a corpus into memory-mapped token shards",
        description="Tokenise text / jsonl / parquet files or saved Hugging Face datasets into "
                    "token shards (raw .bin + tokens.json) that `hymba train --data OUT` streams "
                    "from disk. Memory use does not grow with the corpus.",
    )
    p.add_argument("--data", nargs="+", metavar="PATH", required=True,
                   help="files or folders: .txt, .jsonl ('text' or chat 'messages'), .parquet, "
                        "optionally .gz, or save_to_disk dataset folders")
    p.add_argument("--tokenizer", metavar="DIR", default=None,
                   help="folder with tokenizer.json (default: the bundled BPE tokenizer)")
    p.add_argument("--out", metavar="DIR", required=True, help="new folder for the shards")
    p.add_argument("--shard-tokens", type=int, default=1 << 28,
                   help="tokens per shard file (default 2^28)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..tokenizer import load_tokenizer
    from ..train.bpe import bundled_data_dir
    from ..train.encoding import DocumentEncoder
    from ..train.shards import write_shards
    from ..train.sources import DataError, iter_pieces

    tokenizer = load_tokenizer(args.tokenizer or bundled_data_dir())
    created = not os.path.exists(args.out)
    was_empty = created or (os.path.isdir(args.out) and not os.listdir(args.out))
    try:
        encoder = DocumentEncoder(tokenizer)
        with tqdm(unit="tok", unit_scale=True, desc="tokenizing", dynamic_ncols=True) as bar:
            meta = write_shards(encoder.encode(iter_pieces(args.data)), tokenizer, args.out,
                                [os.path.abspath(p) for p in args.data], args.shard_tokens, bar.update)
    except DataError as exc:
        _clean_up(args.out, created, was_empty)
        raise CLIError(str(exc)) from None
    except BaseException:  # Ctrl-C, a full disk: no empty folder left behind either
        _clean_up(args.out, created, was_empty)
        raise
    masked = sum(s["mask"] is not None for s in meta["shards"])
    print(f"{meta['documents']:,} documents, {meta['tokens']:,} tokens "
          f"({meta['trained_tokens']:,} with loss) in {len(meta['shards'])} shard(s)"
          + (f", {masked} with a loss mask" if masked else "") + f" -> {args.out}")
    return 0


def _clean_up(folder: str, created: bool, was_empty: bool) -> None:
    """After a failed run, remove what it wrote: the output folder if it created it, else the
    files it wrote into the empty folder it was given (a folder that was not empty is refused
    before anything is written, and left alone)."""
    if not was_empty or not os.path.isdir(folder):
        return
    if created:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
