"""``hymba info``: the layer plan, parameter count and cache size of a model."""

from __future__ import annotations

import argparse

from . import CLIError
from ._common import add_model_args, load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show layers, parameter count and cache size of a model",
                       description="Show a model's layers (global/SWA, K/V producer/consumer), "
                                   "parameter count and cache bytes per token and at a length.")
    add_model_args(p)
    p.add_argument("--seq", type=int, default=8000, help="sequence length for the cache size (default 8000)")
    p.add_argument("--cache-dtype-bytes", type=int, default=2, choices=(1, 2, 4),
                   help="bytes per cached value (default 2: fp16/bf16)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference.accounting import cache_bytes, growth_per_token
    from ..model import count_parameters

    config = load_config(args)
    if args.seq < 1:
        raise CLIError(f"--seq must be >= 1, got {args.seq}")
    plan = config.layer_plan()
    print(f"Hymba model: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"mixer {config.mixer_type}, {config.num_memory_tokens} meta tokens, vocab {config.vocab_size}")
    print(f"parameters: {count_parameters(config):,}")
    print()
    print(f"{'layer':>5}  kind")
    for spec in plan:
        print(f"{spec.index:>5}  {spec.kind}")
    per_token = growth_per_token(config, args.cache_dtype_bytes)
    total = cache_bytes(config, args.seq, dtype_bytes=args.cache_dtype_bytes)
    print()
    print(f"cache growth per token (global layers): {per_token:,} bytes")
    print(f"cache per request at {args.seq} tokens ({args.cache_dtype_bytes}-byte values): "
          f"{total['total'] / 1e6:.2f} MB  (" +
          ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in total.items() if k not in ("total", "meta_kv")) +
          f"; plus meta-token K/V {total['meta_kv'] / 1e6:.2f} MB once per model)")
    return 0
