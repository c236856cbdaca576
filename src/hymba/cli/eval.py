"""``hymba eval ppl``: perplexity, loss and bits per byte of a checkpoint on text files."""

from __future__ import annotations

import argparse

from ..jsonfile import write_json
from . import CLIError
from ._common import MODEL_HELP, add_runtime_args, check_output_file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint (perplexity)",
                       description="Evaluate a checkpoint. For benchmark suites use "
                                   "`lm_eval --model hymba` (pip install 'hymba[eval]').")
    tasks = p.add_subparsers(dest="eval_task", metavar="TASK", required=True)
    ppl = tasks.add_parser(
        "ppl", help="strided sliding-window perplexity on text files",
        description="Loss, perplexity and bits per byte of a checkpoint on text documents. A .jsonl "
                    "file gives one document per line; any other file is one document. Documents "
                    "longer than --window are scored with strided windows.")
    ppl.add_argument("--model", metavar="DIR|ID", required=True, help=MODEL_HELP)
    ppl.add_argument("--data", metavar="FILE", nargs="+", required=True, help="text or .jsonl files")
    ppl.add_argument("--field", default="text", help="JSON field holding the text in .jsonl files")
    ppl.add_argument("--window", type=int, default=None,
                     help="tokens per forward pass (default: the config's max_position_embeddings)")
    ppl.add_argument("--stride", type=int, default=None,
                     help="new tokens scored per window after the first (default: window/2)")
    ppl.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    add_runtime_args(ppl)
    ppl.add_argument("--json", metavar="PATH", help="also write the result as JSON (default: not written)")
    ppl.set_defaults(func=run_ppl)


def run_ppl(args: argparse.Namespace) -> int:
    from ..eval.perplexity import read_documents, text_perplexity
    from ..tokenizer import load_tokenizer
    from ._common import load_model

    if args.batch_size < 1:
        raise CLIError("--batch-size must be >= 1")
    check_output_file(args.json)
    texts = read_documents(args.data, args.field)
    model = load_model(args)
    tokenizer = load_tokenizer(args.model)
    window = args.window or model.config.max_position_embeddings
    if window < 2:
        raise CLIError("--window must be >= 2")
    stride = args.stride if args.stride is not None else max(1, window // 2)
    if not 1 <= stride <= window:
        raise CLIError(f"--stride must be in 1..{window}")
    result = text_perplexity(model, tokenizer, texts, window, stride, args.batch_size, progress=True)
    print(f"documents {result.documents}  tokens {result.tokens}  bytes {result.bytes}  "
          f"window {window}  stride {stride}")
    print(f"loss {result.loss:.4f}  perplexity {result.perplexity:.3f}  "
          f"bits/byte {result.bits_per_byte:.4f}")
    if args.json:
        write_json(args.json, {"model": args.model, "data": args.data, **result.to_dict()})
    return 0
