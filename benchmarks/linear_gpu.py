"""Few-row linear layers on one GPU: the Triton kernel against cuBLAS at Hymba-1.5B's decode shapes.

    python benchmarks/linear_gpu.py [--rows 1 2 4] [--sweep] [--json out.json]

For every weight of a decode step (bf16; the gate and up projections as one fused SwiGLU call
against two cuBLAS products and the gate) and 1, 2 or 4 activation rows, each implementation is
timed inside a CUDA graph of at least 40 calls (this host cannot launch small kernels as fast as the GPU
runs them), cycling through enough weight copies to defeat the 60 MB L2, so the weights come from
HBM as in a real step. Bandwidth = weight bytes / time. ``--sweep`` also times the kernel's knob
grid and reports the best setting per shape. Outputs are checked against float64 products.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from graph_timing import L2_DEFEAT_BYTES, graph_time

from hymba.ops.linear_triton import BLOCK_K, NUM_WARPS, WAVES, linear_triton, swiglu_triton
from hymba.ops.norm import silu_mul

# name, in features, out features, calls per decode step (32 layers; lm_head once)
SHAPES = [
    ("in_proj (K/V producer)", 1600, 8960, 17), ("in_proj (consumer)", 1600, 8000, 15),
    ("out_proj", 3200, 1600, 32), ("x_proj", 3200, 132, 32), ("dt_proj", 100, 3200, 32),
    ("gate+up (SwiGLU)", 1600, 5504, 32), ("down_proj", 5504, 1600, 32), ("lm_head", 1600, 32001, 1),
]
CALLS = 40
DEFAULT = dict(block_k=BLOCK_K, waves=WAVES, num_warps=NUM_WARPS)


def measure(name: str, k: int, n: int, rows: int, grid: list[dict]) -> dict:
    """cuBLAS, the kernel at its defaults and (with a grid) its best knobs for one shape."""
    gated = name.startswith("gate")
    nbytes = (2 if gated else 1) * n * k * 2
    copies = max(1, int(L2_DEFEAT_BYTES // nbytes))
    calls = max(CALLS, copies)  # every copy used once a replay: small weights leave L2 too
    ws = [(torch.randn(n, k, device="cuda") / k**0.5).bfloat16() for _ in range(copies * (2 if gated else 1))]
    x = torch.randn(rows, k, device="cuda").bfloat16()

    def weights(i: int) -> tuple[torch.Tensor, ...]:
        j = i % copies
        return (ws[2 * j], ws[2 * j + 1]) if gated else (ws[j],)

    def cublas(i: int) -> torch.Tensor:
        if gated:
            return silu_mul(*(F.linear(x, w) for w in weights(i)))
        return F.linear(x, weights(i)[0])

    def ours(i: int, knobs: dict = DEFAULT) -> torch.Tensor:
        if gated:
            return swiglu_triton(x, *weights(i), **knobs)
        return linear_triton(x, weights(i)[0], **knobs)

    if gated:
        want = silu_mul(*(F.linear(x.double(), w.double()).bfloat16() for w in weights(0)))
    else:
        want = F.linear(x.double(), weights(0)[0].double())
    err = (ours(0).double() - want.double()).abs().max().item()
    t_cublas, t_ours = graph_time(cublas, calls), graph_time(ours, calls)
    best = dict(DEFAULT, us=t_ours * 1e6)
    for knobs in grid:
        t = graph_time(lambda i, kn=knobs: ours(i, kn), calls)
        if t * 1e6 < best["us"]:
            best = dict(knobs, us=t * 1e6)
    return dict(shape=name, rows=rows, k=k, n=n, bytes=nbytes, cublas_us=t_cublas * 1e6,
                triton_us=t_ours * 1e6, best=best, max_err=err)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--sweep", action="store_true", help="also time the kernel's knob grid")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    grid = [dict(block_k=bk, waves=wv, num_warps=w)
            for bk, wv, w in itertools.product((128, 256, 512), (2, 4, 8, 16), (4,))] if args.sweep else []
    results, step = [], {}
    print(f"{'shape':<24}{'rows':>5}{'MB':>8}{'cuBLAS us':>11}{'TB/s':>6}{'triton us':>11}{'TB/s':>6}"
          f"{'best us':>9}{'TB/s':>6}  best knobs", flush=True)
    for (name, k, n, per_step), rows in itertools.product(SHAPES, args.rows):
        r = measure(name, k, n, rows, grid)
        results.append(r)
        totals = step.setdefault(rows, [0.0, 0.0])
        totals[0] += per_step * r["cublas_us"] / 1e3
        totals[1] += per_step * r["triton_us"] / 1e3
        mb = r["bytes"] / 1e6
        knobs = {key: r["best"][key] for key in DEFAULT} if grid else ""
        print(f"{name:<24}{rows:>5}{mb:>8.1f}{r['cublas_us']:>11.1f}{mb / r['cublas_us']:>6.2f}"
              f"{r['triton_us']:>11.1f}{mb / r['triton_us']:>6.2f}{r['best']['us']:>9.1f}"
              f"{mb / r['best']['us']:>6.2f}  {knobs}  err {r['max_err']:.1e}", flush=True)
    for rows, (c, t) in step.items():
        print(f"one decode step's linear layers, {rows} row(s): cuBLAS {c:.3f} ms, Triton {t:.3f} ms")
    if args.json:
        summary = {rows: dict(cublas_ms=c, triton_ms=t) for rows, (c, t) in step.items()}
        args.json.write_text(json.dumps(dict(shapes=results, step=summary), indent=2))


if __name__ == "__main__":
    main()
