"""CPU decoding with the hybrid cache: prefill time, ms per decode step and cache bytes against
prompt length.

    python benchmarks/decode_cpu.py [--preset tiny] [--prompts 32 64 256 1024 1900] [--steps 64]
                                    [--batch 1] [--threads 1] [--json out.json]

Random weights (the speed does not depend on them). Past the sliding window only the global
layers' K/V grow; the ring buffers, SSM and conv state stay the same size, and a decode step only
reads the global layers' K/V up to the current length.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from hymba import HymbaConfig, HymbaForCausalLM
from hymba.inference import HybridCache, decode_logits, meta_prefix


def run(model: HymbaForCausalLM, prompt_len: int, steps: int, batch: int) -> dict:
    g = torch.Generator().manual_seed(prompt_len)
    ids = torch.randint(3, model.config.vocab_size, (batch, prompt_len), generator=g)
    cache = HybridCache(model.config, batch, prompt_len + steps, dtype=model.dtype)
    cache.reset(meta_prefix(model))
    start = time.perf_counter()
    token = model(ids, state=cache, logits_to_keep=1).logits[:, -1].argmax(-1)
    prefill = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        token = decode_logits(model, token, cache).argmax(-1)
        times.append(time.perf_counter() - start)
    parts = cache.nbytes()
    step = statistics.median(times[steps // 4 :])  # skip warm-up steps
    return dict(prompt=prompt_len, batch=batch, prefill_s=prefill, step_ms=step * 1e3,
                tokens_per_s=batch / step, cache_bytes=parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--prompts", type=int, nargs="+", default=[32, 64, 256, 1024, 1900])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = HymbaConfig.from_preset(args.preset)
    model = HymbaForCausalLM(config).eval()
    with torch.inference_mode():
        run(model, 8, 4, args.batch)  # warm-up
        rows = [run(model, n, args.steps, args.batch) for n in args.prompts]
    windows = sorted({s.window for s in config.layer_plan() if s.window})
    print(f"decode, preset {args.preset} (window {windows}, {config.num_memory_tokens} meta tokens), "
          f"batch {args.batch}, {args.steps} steps, {args.threads} threads, fp32, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'prompt':>7}{'prefill ms':>12}{'ms/step':>9}{'tok/s':>8}{'global KV KB':>14}"
          f"{'SWA KV KB':>11}{'SSM+conv KB':>13}")
    for r in rows:
        c = r["cache_bytes"]
        print(f"{r['prompt']:>7}{r['prefill_s'] * 1e3:>12.1f}{r['step_ms']:>9.2f}{r['tokens_per_s']:>8.0f}"
              f"{c['global_kv'] / 1e3:>14.1f}{(c['swa_kv'] + c['swa_positions']) / 1e3:>11.1f}"
              f"{(c['ssm_state'] + c['conv_state']) / 1e3:>13.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(preset=args.preset, threads=args.threads, torch=torch.__version__, rows=rows), fh, indent=2)


if __name__ == "__main__":
    main()
