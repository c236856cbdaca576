"""FlexAttention on one GPU at Hymba-1.5B's prefill/training shapes: tile settings side by side.

    python benchmarks/flex_gpu.py [--length 8320] [--backward] [--json out.json]

25 query heads over 5 K/V heads (d_qk 64, d_v 128), bf16, batch 1, contiguous heads (as
``hymba.ops.attention.flex`` passes K and V), compiled for dynamic lengths. For a global (causal) layer and a
sliding-window layer (window 1,024, 128 meta tokens always visible) it times the forward (and
with ``--backward`` forward + backward) with inductor's default tiles, the library's choice
(``hymba.ops.attention.flex.kernel_options``) and a few others; each setting is checked against the
default's output. ``--layouts`` instead times q/k/v contiguous against views of the projection,
compiled with dynamic and static shapes. Times: CUDA events around 10 back-to-back calls (so the host's dispatch
overlaps the GPU), median of 5; TFLOP/s counts the visible (query, key) pairs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from graph_timing import stream_time
from torch.nn.attention.flex_attention import flex_attention

from hymba.ops.attention import flex

HQ, HKV, DQK, DV, META, WINDOW = 25, 5, 64, 128, 128, 1024
CALLS = 10

FWD_TILES = [(128, 64, 3, 4), (128, 64, 3, 8), (64, 64, 3, 4), (128, 128, 2, 8), (64, 128, 3, 4)]
# (BLOCK_M1, BLOCK_N1, BLOCK_M2, BLOCK_N2, stages, warps)
BWD_TILES = [(64, 64, 64, 64, 3, 4), (32, 64, 64, 32, 3, 4), (64, 64, 64, 64, 2, 8), (32, 128, 128, 32, 3, 4)]


def visible_pairs(length: int, window: int | None) -> int:
    q = torch.arange(length, dtype=torch.float64)
    if window is None:
        return int((q + 1).sum())
    return int((torch.clamp(q, max=window) + 1 + torch.clamp(q - window, min=0, max=META)).sum())


def time_ms(fn) -> float:
    return stream_time(fn, CALLS) * 1e3


LAYOUTS = ("contiguous", "q view", "k/v views", "all views")


def inputs(length: int, grad: bool, layout: str = "contiguous"):
    """q, k, v as (b, H, L, d): contiguous, or views of one (b, L, H·d) projection (``layout``)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, length, (HQ + HKV) * DQK + HKV * DV, generator=g, device="cuda", dtype=torch.bfloat16)
    q, k, v = x.split([HQ * DQK, HKV * DQK, HKV * DV], dim=-1)
    heads = [t.view(1, length, -1, d).transpose(1, 2) for t, d in ((q, DQK), (k, DQK), (v, DV))]
    keep = {"contiguous": (), "q view": (0,), "k/v views": (1, 2), "all views": (0, 1, 2)}[layout]
    heads = [t if i in keep else t.contiguous() for i, t in enumerate(heads)]
    if grad:
        heads = [t.detach().requires_grad_(True) for t in heads]
    return heads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=8320, help="internal positions (8K prompt + 128 meta)")
    parser.add_argument("--backward", action="store_true", help="also time forward + backward")
    parser.add_argument("--layouts", action="store_true",
                        help="compare memory layouts of q/k/v (contiguous or projection views) instead of tiles")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch._dynamo.config.recompile_limit = 256  # every setting below is its own compilation
    q, k, v = inputs(args.length, grad=False)
    chosen = flex.kernel_options(q, v)
    if args.layouts:
        return compare_layouts(args, chosen)
    compiled = torch.compile(flex_attention, dynamic=True)
    settings = [("default", {}), ("library", chosen)] + [
        (f"fwd {m}x{n} s{s} w{w}", dict(fwd_BLOCK_M=m, fwd_BLOCK_N=n, fwd_num_stages=s, fwd_num_warps=w))
        for m, n, s, w in FWD_TILES
    ]
    if args.backward:
        settings += [
            (f"bwd {m1}/{n1}/{m2}/{n2} s{s} w{w}", dict(chosen, bwd_BLOCK_M1=m1, bwd_BLOCK_N1=n1, bwd_BLOCK_M2=m2,
                                                         bwd_BLOCK_N2=n2, bwd_num_stages=s, bwd_num_warps=w))
            for m1, n1, m2, n2, s, w in BWD_TILES
        ]
    rows = []
    print(f"| layer | tiles | forward ms | fwd TFLOP/s | fwd+bwd ms | max diff vs default |\n|{' --- |' * 6}")
    for layer, window in (("global", None), ("sliding window", WINDOW)):
        mask = flex._block_mask(args.length, args.length, window, META, 0, "cuda")
        flops = 2 * HQ * (DQK + DV) * visible_pairs(args.length, window)
        ref = None
        for name, opts in settings:
            row = dict(layer=layer, tiles=name, options=opts)
            try:
                fwd = lambda o=opts, mask=mask: compiled(q, k, v, block_mask=mask, enable_gqa=True, kernel_options=o)  # noqa: E731
                out = fwd()
                ref = out if ref is None else ref
                row["diff"] = (out.float() - ref.float()).abs().max().item()
                row["forward_ms"] = time_ms(fwd)
                if args.backward:
                    qg, kg, vg = inputs(args.length, grad=True)
                    dout = torch.randn_like(out)

                    def both(o=opts, qg=qg, kg=kg, vg=vg, dout=dout, mask=mask):
                        y = compiled(qg, kg, vg, block_mask=mask, enable_gqa=True, kernel_options=o)
                        torch.autograd.backward(y, dout)

                    row["fwd_bwd_ms"] = time_ms(both)
            except Exception as exc:  # noqa: BLE001 - a setting that does not compile is reported
                row["error"] = f"{type(exc).__name__}: {exc}"[:200]
            rows.append(row)
            if "error" in row:
                print(f"| {layer} | {name} | failed: {row['error'][:80]} | | | |", flush=True)
                continue
            tflops = flops / row["forward_ms"] / 1e9
            both_ms = f"{row['fwd_bwd_ms']:.3f}" if "fwd_bwd_ms" in row else "-"
            print(f"| {layer} | {name} | {row['forward_ms']:.3f} | {tflops:.0f} | {both_ms} | {row['diff']:.1e} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                                             length=args.length, rows=rows), indent=1))


def compare_layouts(args, chosen: dict) -> None:
    """Forward time by q/k/v layout, with dynamic and static compilation, default and chosen tiles."""
    rows = []
    print(f"| layer | layout | compile | tiles | forward ms |\n|{' --- |' * 5}")
    for layer, window in (("global", None), ("sliding window", WINDOW)):
        mask = flex._block_mask(args.length, args.length, window, META, 0, "cuda")
        for layout in LAYOUTS:
            q, k, v = inputs(args.length, grad=False, layout=layout)
            for dynamic in (True, False):
                compiled = torch.compile(flex_attention, dynamic=dynamic)
                for name, opts in (("default", {}), ("library", chosen)):
                    fwd = lambda o=opts, c=compiled, mask=mask, q=q, k=k, v=v: c(  # noqa: E731
                        q, k, v, block_mask=mask, enable_gqa=True, kernel_options=o)
                    ms = time_ms(fwd)
                    kind = "dynamic" if dynamic else "static"
                    rows.append(dict(layer=layer, layout=layout, compile=kind, tiles=name, forward_ms=ms))
                    print(f"| {layer} | {layout} | {kind} | {name} | {ms:.3f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                                             length=args.length, rows=rows), indent=1))


if __name__ == "__main__":
    main()
