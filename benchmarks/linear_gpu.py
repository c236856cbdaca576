"""Decode-step linear layers on one GPU: the Triton kernels against cuBLAS at Hymba-1.5B's shapes.

    python benchmarks/linear_gpu.py [--rows 1 4 32 128] [--sweep] [--gemv-sweep] [--only NAME ...] [--json out.json]

For every weight of a decode step (bf16; the gate and up projections as one fused SwiGLU call
against two cuBLAS products and the gate) and 1 to 128 activation rows, cuBLAS, the matrix-vector
kernel (up to four rows, not the SwiGLU) and the tensor-core kernel are each timed inside a CUDA
graph of at least 40 calls (this host cannot launch small kernels as fast as the GPU runs them),
cycling through enough weight copies to defeat the 60 MB L2, so the weights come from
HBM as in a real step. Bandwidth = weight bytes / time. ``--sweep`` also times the tensor-core
kernel's knob grid and reports the best setting per shape, ``--gemv-sweep`` the matrix-vector
kernel's; ``--only`` keeps the shapes whose names start with the given words. Outputs are checked
against float64 products.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from graph_timing import L2_DEFEAT_BYTES, graph_time

from hymba.ops.linear.triton import dot_config, linear_dot, linear_triton, swiglu_dot
from hymba.ops.swiglu import silu_mul
from hymba.ops.switches import num_sms

# name, in features, out features, calls per decode step (32 layers; lm_head once)
SHAPES = [
    ("in_proj (K/V producer)", 1600, 8960, 17), ("in_proj (consumer)", 1600, 8000, 15),
    ("out_proj", 3200, 1600, 32), ("x_proj", 3200, 132, 32), ("dt_proj", 100, 3200, 32),
    ("gate+up (SwiGLU)", 1600, 5504, 32), ("down_proj", 5504, 1600, 32), ("lm_head", 1600, 32001, 1),
]
CALLS = 40


def dot_grid(rows: int, n: int, k: int, gated: bool) -> list[dict]:
    """The tensor-core kernel's knob grid for one shape: tiles, stages, warps and K splits aimed
    at one or two waves of programs (and none)."""
    sms = num_sms(torch.device("cuda"))
    bm = dot_config(rows, n, k, gated, sms)["bm"]
    if rows <= 16:
        tiles = [(bm, bn, bk, 4) for bn, bk in itertools.product((32, 64, 128), (128, 256))]
        stages = (3, 5)
    else:
        tiles = [(bm, bn, 64, w) for bn, w in itertools.product((64, 128), (4, 8))]
        tiles += [(bm, 64, 128, 4)]
        stages = (3, 4)
    grid = []
    for (bm_, bn, bk, warps), st in itertools.product(tiles, stages):
        programs = -(-n // bn) * -(-rows // bm_)
        splits = {1} | {max(1, min(waves * sms // programs, k // (2 * bk))) for waves in (1, 2)}
        grid += [dict(bm=bm_, bn=bn, bk=bk, num_warps=warps, num_stages=st, split=s) for s in sorted(splits)]
    return grid


def gemv_grid(k: int) -> list[dict]:
    """The matrix-vector kernel's knob grid: columns per step (up to the padded width), programs
    per SM and warps."""
    widths = [bk for bk in (128, 256, 512, 1024, 2048, 4096) if bk <= max(128, triton.next_power_of_2(k))]
    return [dict(block_k=bk, waves=w, num_warps=nw) for bk, w, nw in itertools.product(widths, (1, 2, 4, 8), (4, 8))]


def measure(name: str, k: int, n: int, rows: int, sweep: bool, gemv_sweep: bool = False) -> dict:
    """cuBLAS, the GEMV (up to four rows) and the tensor-core kernel at their defaults and (with
    ``sweep`` / ``gemv_sweep``) at their best knobs, for one shape."""
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

    def gemv(i: int, knobs: dict | None = None) -> torch.Tensor:
        return linear_triton(x, *weights(i), **(knobs or {}))

    def dot(i: int, knobs: dict | None = None) -> torch.Tensor:
        return (swiglu_dot if gated else linear_dot)(x, *weights(i), knobs=knobs)

    if gated:
        want = silu_mul(*(F.linear(x.double(), w.double()).bfloat16() for w in weights(0)))
    else:
        want = F.linear(x.double(), weights(0)[0].double())
    with_gemv = rows <= 4 and not gated
    err = max((f(0).double() - want.double()).abs().max().item() for f in ((gemv, dot) if with_gemv else (dot,)))
    result = dict(shape=name, rows=rows, k=k, n=n, bytes=nbytes, cublas_us=graph_time(cublas, calls) * 1e6,
                  gemv_us=graph_time(gemv, calls) * 1e6 if with_gemv else None,
                  dot_us=graph_time(dot, calls) * 1e6, max_err=err)
    best = dict(dot_config(rows, n, k, gated, num_sms(torch.device("cuda"))), us=result["dot_us"])
    for knobs in dot_grid(rows, n, k, gated) if sweep else []:
        try:
            t = graph_time(lambda i, kn=knobs: dot(i, kn), calls) * 1e6
        except triton.runtime.errors.OutOfResources:  # tiles times stages beyond shared memory
            continue
        if t < best["us"]:
            best = dict(knobs, us=t)
    result["best"] = best
    if with_gemv and gemv_sweep:
        best_gemv = dict(us=result["gemv_us"])
        for knobs in gemv_grid(k):
            t = graph_time(lambda i, kn=knobs: gemv(i, kn), calls) * 1e6
            if t < best_gemv["us"]:
                best_gemv = dict(knobs, us=t)
        result["best_gemv"] = best_gemv
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 32, 128])
    parser.add_argument("--sweep", action="store_true", help="also time the tensor-core kernel's knob grid")
    parser.add_argument("--gemv-sweep", action="store_true", help="also time the matrix-vector kernel's knob grid")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only the shapes whose names start with these")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    shapes = [s for s in SHAPES if not args.only or s[0].startswith(tuple(args.only))]
    results, step = [], {}
    print(f"{'shape':<24}{'rows':>5}{'MB':>7}{'cuBLAS us':>10}{'TB/s':>6}{'GEMV us':>9}{'TB/s':>6}"
          f"{'dot us':>8}{'TB/s':>6}{'best us':>9}{'TB/s':>6}  best knobs", flush=True)
    for rows, (name, k, n, per_step) in itertools.product(args.rows, shapes):
        r = measure(name, k, n, rows, args.sweep, args.gemv_sweep)
        results.append(r)
        totals = step.setdefault(rows, dict(cublas_ms=0.0, gemv_ms=0.0, dot_ms=0.0, best_ms=0.0))
        for key, us in (("cublas_ms", r["cublas_us"]), ("gemv_ms", r["gemv_us"]), ("dot_ms", r["dot_us"]),
                        ("best_ms", r["best"]["us"])):
            totals[key] += per_step * (us or float("nan")) / 1e3
        mb = r["bytes"] / 1e6
        gemv = f"{r['gemv_us']:>9.1f}{mb / r['gemv_us']:>6.2f}" if r["gemv_us"] else f"{'-':>9}{'':>6}"
        knobs = {key: v for key, v in r["best"].items() if key != "us"} if args.sweep else ""
        print(f"{name:<24}{rows:>5}{mb:>7.1f}{r['cublas_us']:>10.1f}{mb / r['cublas_us']:>6.2f}{gemv}"
              f"{r['dot_us']:>8.1f}{mb / r['dot_us']:>6.2f}{r['best']['us']:>9.1f}{mb / r['best']['us']:>6.2f}"
              f"  {knobs}  err {r['max_err']:.1e}", flush=True)
        if "best_gemv" in r:
            g = r["best_gemv"]
            print(f"{'':<24}best GEMV {g['us']:.1f} us ({mb / g['us']:.2f} TB/s): "
                  + (", ".join(f"{key}={v}" for key, v in g.items() if key != "us") or "the defaults"), flush=True)
        if args.json:
            args.json.write_text(json.dumps(dict(shapes=results, step=step), indent=2))
    for rows, t in step.items():
        what = "the shapes above" if args.only else "one decode step's linear layers"
        print(f"{what}, {rows} row(s), per step: " + ", ".join(f"{k} {v:.3f}" for k, v in t.items()))


if __name__ == "__main__":
    main()
