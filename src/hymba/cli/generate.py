"""``hymba generate``: continue a prompt, streaming the text to stdout."""

from __future__ import annotations

import argparse
import sys

from . import CLIError
from ._common import MODEL_HELP, add_quantize_arg, add_runtime_args


def add_generation_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """Model, device and sampling flags shared by ``generate`` and ``chat``."""
    p.add_argument("--model", metavar="DIR|ID", required=True, help=MODEL_HELP)
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="tokens to generate at most")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --do-sample)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="penalise tokens already in the text, CTRL style (1: off)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: none, a fresh one each run)")
    p.add_argument("--stop", metavar="TEXT", action="append", default=[], help="stop when the text contains this (repeatable; default: none)")
    p.add_argument("--swa-decode", choices=("trained", "reference"), default="trained",
                   help="sliding-window decode semantics: 'trained' (= the full forward, default) or "
                        "'reference' (NVIDIA's cache: one key fewer, token-for-token with its generate)")
    add_runtime_args(p)
    add_quantize_arg(p)


def generation_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
        seed=args.seed, swa_decode=args.swa_decode,
    )


def load_model_and_tokenizer(args: argparse.Namespace):
    from ..tokenizer import TokenizerError, load_tokenizer
    from ._common import load_model

    model = load_model(args).eval()
    try:
        return model, load_tokenizer(args.model)
    except TokenizerError as exc:
        raise CLIError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text from a prompt (streamed)",
                       description="Continue a prompt with a checkpoint and stream the new text to "
                                   "stdout. Greedy unless --do-sample.")
    p.add_argument("--prompt", required=True, help="the prompt text ('-' reads stdin)")
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt as one user turn with the checkpoint's chat template")
    add_generation_args(p, max_new_tokens=128)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference import stream
    from ..tokenizer import TokenizerError, check_utf8

    if args.prompt == "-":  # bytes, so that text which is not UTF-8 gets the error below, whatever the locale
        prompt = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    else:
        prompt = args.prompt
    if not prompt:
        raise CLIError("the prompt is empty")
    check_utf8(prompt, "the prompt")  # before the model loads
    model, tokenizer = load_model_and_tokenizer(args)
    stops = list(args.stop)
    if args.chat:
        try:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True)
        except TokenizerError as exc:
            raise CLIError(str(exc)) from None
        stops += CHAT_STOPS
    for piece in stream(model, tokenizer, prompt, stop_strings=stops, **generation_kwargs(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


# The released chat format marks the next turn with "<extra_id_1>"; NVIDIA's example stops on "</s>".
CHAT_STOPS = ["</s>", "<extra_id_1>"]
