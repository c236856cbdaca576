"""``hymba cache-size``: the generation cache of a model by part, next to Llama-3.2-shaped
transformers sized the same way (a real :class:`~hymba.inference.HybridCache` on the meta device)."""

from __future__ import annotations

import argparse

from ..jsonfile import write_json
from ._common import add_model_args, check_output_file, load_config

# Paper Table 1/2 (arXiv 2411.13676): Hymba-1.5B cache at 8K tokens, fp16, and Llama-3.2-3B's.
PAPER_MB, PAPER_RATIO = 78.6, 11.67
DTYPES = {"float16": 2, "bfloat16": 2, "float32": 4}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache-size", help="generation cache size by part vs Llama-3.2 transformers",
                       description="Allocate a model's generation cache on the meta device (no memory) "
                                   "and print its size by part, next to Llama-3.2-1B/3B-shaped "
                                   "transformers cached the same way.")
    add_model_args(p)
    p.add_argument("--seq", type=int, default=8000, help="tokens per sequence (default 8000)")
    p.add_argument("--batch", type=int, default=1, help="sequences (default 1)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float16",
                   help="dtype of every cached value, SSM state included (default float16, as the paper)")
    p.add_argument("--json", metavar="PATH", help="also write the numbers as JSON (default: not written)")
    p.set_defaults(func=run)


def llama_config(layers: int, hidden: int, heads: int, kv_heads: int):
    """A plain transformer in this library's terms: attention only, all layers global, no meta
    tokens, no K/V sharing, V head dim = Q/K head dim."""
    from ..config import HymbaConfig

    return HymbaConfig(
        vocab_size=128256, hidden_size=hidden, intermediate_size=8192, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, mixer_type="attention",
        sliding_window=None, global_attn_idx=None, kv_reuse_group=None, num_memory_tokens=0,
        mamba_expand=1, rope_type="default", max_position_embeddings=131072,
    )


BASELINES = {
    "Llama-3.2-1B": (16, 2048, 32, 8),
    "Llama-3.2-3B": (28, 3072, 24, 8),
}


def cache_parts(config, seq: int, batch: int, dtype_name: str) -> dict[str, int]:
    import torch

    from ..inference.cache import HybridCache

    dtype = getattr(torch, dtype_name)
    cache = HybridCache(config, batch, seq, dtype=dtype, device="meta", ssm_dtype=dtype)
    return cache.nbytes()


def run(args: argparse.Namespace) -> int:
    from . import CLIError

    if args.seq < 1 or args.batch < 1:
        raise CLIError("--seq and --batch must be >= 1")
    check_output_file(args.json)
    config = load_config(args)
    plan = config.layer_plan()
    name = args.model or args.preset or "tiny"
    parts = cache_parts(config, args.seq, args.batch, args.dtype)
    glob = sum(1 for s in plan if s.computes_kv and s.window is None)
    swa = [s.window for s in plan if s.computes_kv and s.window is not None]
    ssm = sum(1 for s in plan if s.has_ssm)
    m = config.num_memory_tokens
    rows = [
        ("global K/V", f"{glob} layers x {args.seq} tokens", parts["global_kv"]),
        ("SWA K/V ring", f"{len(swa)} layers x window+1 = {swa[0] + 1 if swa else 0} slots", parts["swa_kv"]),
        ("SWA slot positions", "int64, one per ring slot", parts["swa_positions"]),
        ("SSM state", f"{ssm} layers x {config.d_inner} x {config.mamba_d_state}", parts["ssm_state"]),
        ("conv state", f"{ssm} layers x {config.d_inner} x {config.mamba_d_conv}", parts["conv_state"]),
    ]
    mb = 1e6
    print(f"Generation cache of {name}: batch {args.batch} x {args.seq} tokens, {args.dtype} "
          f"(MB = 10^6 bytes; from a HybridCache allocated on the meta device)")
    print()
    for part, what, size in rows:
        print(f"  {part:<20} {what:<44} {size / mb:>9.2f} MB")
    total = "total per request" if args.batch == 1 else f"total for the batch of {args.batch}"
    print(f"  {total:<65} {parts['total'] / mb:>9.2f} MB")
    print(f"  {'meta-token K/V':<20} {f'{m} tokens x {glob + len(swa)} K/V layers, once per model':<44} "
          f"{parts['meta_kv'] / mb:>9.2f} MB  (input-independent, shared by all requests)")
    print()
    result = {"model": name, "seq": args.seq, "batch": args.batch, "dtype": args.dtype, "parts": parts,
              "baselines": {}}
    for base, shape in BASELINES.items():
        size = cache_parts(llama_config(*shape), args.seq, args.batch, args.dtype)["total"]
        ratio = size / parts["total"]
        result["baselines"][base] = {"bytes": size, "ratio": ratio}
        print(f"  {base + '-shaped transformer':<65} {size / mb:>9.2f} MB  ({ratio:.2f}x this cache)")
    if name == "hymba-1.5b" and args.seq == 8000 and args.dtype == "float16" and args.batch == 1:
        print()
        print(f"Paper (Tables 1-2): {PAPER_MB} MB for Hymba-1.5B at 8K tokens in fp16, {PAPER_RATIO}x "
              f"smaller than Llama-3.2-3B. This cache: {parts['total'] / mb:.2f} MB "
              f"({parts['total'] / mb - PAPER_MB:+.2f} MB); with the meta-token K/V counted per request "
              f"it would be {(parts['total'] + parts['meta_kv']) / mb:.2f} MB.")
    if args.json:
        write_json(args.json, result)
    return 0
