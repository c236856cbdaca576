"""``hymba chat``: a multi-turn REPL with the checkpoint's chat template."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from . import CLIError
from .generate import CHAT_STOPS, add_generation_args, generation_kwargs, load_model_and_tokenizer

HELP = "Commands: /reset clears the conversation, /exit (or Ctrl-D) quits."


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat with an instruct checkpoint",
                       description="Multi-turn chat using the checkpoint's chat template. " + HELP)
    p.add_argument("--system", default=None, help="system message (default: none)")
    add_generation_args(p, max_new_tokens=256)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model, tokenizer = load_model_and_tokenizer(args)
    if not tokenizer.chat_template:
        raise CLIError(f"{args.model} has no chat template (tokenizer_config.json); use `hymba generate`")
    repl(model, tokenizer, sys.stdin, sys.stdout, system=args.system, **generation_kwargs(args))
    return 0


def repl(model, tokenizer, stdin: TextIO, stdout: TextIO, system: str | None = None, **kwargs) -> list[dict]:
    """Read user turns from ``stdin`` until EOF or /exit and stream the replies to ``stdout``.

    Returns the conversation. A turn that does not fit (prompt too long) is reported and dropped.
    """
    from ..inference import stream
    from ..model import InputError
    from ..tokenizer import TokenizerError

    def start() -> list[dict]:
        return [{"role": "system", "content": system}] if system else []

    messages = start()
    interactive = stdin.isatty()
    stdout.write(HELP + "\n")
    while True:
        stdout.write("you> ")
        stdout.flush()
        line = stdin.readline()
        if not line:  # Ctrl-D
            stdout.write("\n")
            return messages
        text = line.strip()
        if not interactive:
            stdout.write(line if line.endswith("\n") else line + "\n")
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return messages
        if text == "/reset":
            messages = start()
            stdout.write("(conversation cleared)\n")
            continue
        messages.append({"role": "user", "content": text})
        reply: list[str] = []
        try:
            ids = tokenizer.apply_chat_template(messages, tokenize=True)
            stdout.write("hymba> ")
            for piece in stream(model, tokenizer, ids, stop_strings=CHAT_STOPS, **kwargs):
                reply.append(piece)
                stdout.write(piece)
                stdout.flush()
        except (InputError, TokenizerError) as exc:
            messages.pop()
            stdout.write(f"\nerror: {exc}" + (" (try /reset)" if isinstance(exc, InputError) else "") + "\n")
            continue
        except KeyboardInterrupt:  # Ctrl-C stops the reply, not the chat
            pass
        stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply).strip()})
