"""``hymba serve``: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over the batching engine."""

from __future__ import annotations

import argparse
import os

from . import CLIError
from ._common import MODEL_HELP, add_quantize_arg, add_runtime_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve a checkpoint over an OpenAI-compatible HTTP API",
        description="Serve a checkpoint on /v1/completions, /v1/chat/completions and /v1/models "
                    "(OpenAI's API, streaming included), with /health and /metrics (Prometheus). "
                    "Requests share one continuously batched decode. SIGTERM or Ctrl-C stops "
                    "admitting requests, lets those in flight finish (up to --drain-timeout) and exits.")
    p.add_argument("--model", metavar="DIR|ID", required=True, help=MODEL_HELP)
    p.add_argument("--served-model-name", metavar="NAME", default=None,
                   help="the model name clients send (default: the folder's name, or the hub id)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--api-key", default=os.environ.get("HYMBA_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $HYMBA_API_KEY, else none)")
    p.add_argument("--max-batch", type=int, default=32, help="decode slots (requests decoded together)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="prompt + new tokens per request (default: the config's max positions)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests waiting for a slot; beyond that the server answers 429")
    p.add_argument("--prefill-chunk", type=int, default=8192,
                   help="prompt tokens computed per prefill step, padding included (default: 8192)")
    p.add_argument("--prefill-rows", type=int, default=16,
                   help="prompts stored at once, in rows of a small prefill cache (default: 16)")
    p.add_argument("--prefix-cache-mb", type=float, default=256,
                   help="memory for prefix-state snapshots (0: no prefix reuse)")
    p.add_argument("--max-tokens", type=int, default=4096, help="largest max_tokens a request may ask for")
    p.add_argument("--max-prompt-tokens", type=int, default=None, help="longest prompt accepted, in tokens (default: none beyond --max-model-len)")
    p.add_argument("--max-body-mb", type=float, default=4, help="largest request body")
    p.add_argument("--drain-timeout", type=float, default=30,
                   help="seconds to let requests in flight finish on shutdown before aborting them")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default: info)")
    add_runtime_args(p)
    add_quantize_arg(p)
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be in [0, 65535], got {args.port}")
    for flag in ("max_batch", "max_queue", "prefill_chunk", "max_tokens"):
        if getattr(args, flag) < 1:
            raise CLIError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("max_model_len", "max_prompt_tokens"):
        value = getattr(args, flag)
        if value is not None and value < 2:
            raise CLIError(f"--{flag.replace('_', '-')} must be >= 2, got {value}")
    if args.prefix_cache_mb < 0 or args.max_body_mb <= 0 or args.drain_timeout < 0:
        raise CLIError("--prefix-cache-mb and --drain-timeout must be >= 0, --max-body-mb > 0")
    if args.api_key is not None and not args.api_key.strip():
        raise CLIError("--api-key is empty")
    from ..hub import is_hub_id

    if not os.path.isdir(args.model) and not is_hub_id(args.model):
        raise CLIError(f"model folder {args.model} does not exist")


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise CLIError(f"hymba serve needs FastAPI and uvicorn ({exc.name} is missing): "
                       "pip install 'hymba[serve]'") from None
    from ..hub import is_hub_id
    from ..serving.engine import Engine, EngineConfig
    from .generate import load_model_and_tokenizer

    sock = _listen(args.host, args.port)  # before the model loads: a taken port is one clear error
    try:
        model, tokenizer = load_model_and_tokenizer(args)
        engine = Engine(model, tokenizer, EngineConfig(
            max_batch=args.max_batch, max_model_len=args.max_model_len, max_queue=args.max_queue,
            prefill_chunk_tokens=args.prefill_chunk, prefill_rows=args.prefill_rows, prefix_cache_bytes=int(args.prefix_cache_mb * (1 << 20))))
        engine.warmup()  # every batch bucket's CUDA graph, before the first request
        # the length the engine resolved (its default: the model's maximum)
        max_model_len = getattr(engine, "max_model_len", None) or args.max_model_len
        name = args.served_model_name or (args.model if not os.path.isdir(args.model) and is_hub_id(args.model)
                                          else os.path.basename(os.path.normpath(args.model)))
        return serve(engine, tokenizer, name, args, max_model_len, sock)
    finally:
        sock.close()


def serve(engine, tokenizer, name: str, args: argparse.Namespace, max_model_len: int | None, sock) -> int:
    """Run uvicorn on the bound socket ``sock`` until SIGTERM/SIGINT, then drain the engine; 0 on a
    clean stop."""
    import asyncio
    import signal

    import uvicorn

    from ..serving.async_engine import AsyncEngine
    from ..serving.server import ServerLimits, build_app

    async_engine = AsyncEngine(engine)
    limits = ServerLimits(max_body_bytes=int(args.max_body_mb * (1 << 20)),
                          max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens,
                          max_model_len=max_model_len)
    app = build_app(async_engine, tokenizer, name, api_key=args.api_key, limits=limits)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=args.drain_timeout + 15, lifespan="off")

    class Server(uvicorn.Server):
        """uvicorn, with the engine's drain started at the first SIGTERM/SIGINT."""

        drain: asyncio.Task | None = None
        loop: asyncio.AbstractEventLoop | None = None

        def handle_exit(self, sig, frame) -> None:
            if self.drain is None and self.loop is not None:
                def start() -> None:
                    self.drain = self.loop.create_task(async_engine.shutdown(args.drain_timeout))
                self.loop.call_soon_threadsafe(start)
            super().handle_exit(sig, frame)

    server = Server(config)

    async def main() -> None:
        server.loop = asyncio.get_running_loop()
        try:
            await server.serve(sockets=[sock])
        finally:
            await asyncio.sleep(0)  # let a drain scheduled by the signal start
            if server.drain is not None:
                await server.drain
            else:
                await async_engine.shutdown(0)

    # uvicorn re-raises the signal it caught once it has shut down; a no-op SIGTERM handler
    # makes that re-raise harmless, so a graceful stop exits 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        asyncio.run(main())
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise CLIError(f"the server on {args.host}:{args.port} did not start (see the log above)")
    return 0


def _listen(host: str, port: int):
    """A TCP socket bound to ``host:port`` (uvicorn listens on it)."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise CLIError(f"--host {host}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock

