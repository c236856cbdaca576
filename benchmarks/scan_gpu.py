"""GPU selective scan: the Triton kernels (several forward launches) against the chunked PyTorch scan.

    python benchmarks/scan_gpu.py [--json out.json] [--backward-sweep [LENGTH]]

Shapes are Hymba-1.5B's SSM branch (channels 3200, state 16), bf16 activations as in the model.
The floor: the forward reads u, Δ, z and writes y (4 bytes·b·L·d in bf16, B/C are small) and
evaluates exp(Δ A) once per (t, channel, state); the backward does that twice and reads/writes
about three times the bytes.
"""

from __future__ import annotations

import argparse
import json

import torch

from hymba.ops.scan import selective_scan_chunked
from hymba.ops.scan import triton as scan_triton

# launches: (channels per program, warps, time segments (None = automatic), steps prefetched by
# the forward and by the backward)
LAUNCHES = [(32, 1, None, 4, 1), (32, 1, 1, 4, 1), (32, 1, None, 2, 1), (32, 1, None, 4, 2), (64, 2, None, 4, 1),
            (32, 1, 32, 4, 1), (128, 4, None, 4, 1)]


def inputs(b: int, L: int, d: int = 3200, n: int = 16, grad: bool = False) -> dict:
    r = lambda *s: torch.randn(*s, device="cuda")  # noqa: E731
    args = dict(
        u=r(b, L, d).bfloat16(), delta=(r(b, L, d) - 2).bfloat16(),
        A=-torch.exp(torch.log(torch.arange(1, n + 1.0, device="cuda")).repeat(d, 1)),
        B=r(b, L, n).bfloat16(), C=r(b, L, n).bfloat16(), D=torch.ones(d, device="cuda"),
        z=r(b, L, d).bfloat16(), delta_bias=torch.full((d,), -1.0, device="cuda"),
    )
    if grad:
        for v in args.values():
            v.requires_grad_(True)
    return args


def bench(fn, args: dict, backward: bool) -> float:
    dy = torch.randn_like(args["u"])

    def run():
        y, _ = fn(**args)
        if backward:
            y.backward(dy)

    for _ in range(2):
        run()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[5]


# (channels per program, register cap of the backward): 16 channels a warp spill less (two
# lanes a channel); offline sm_90 builds: 32/None 255 registers + 312 B of stack, 16/None 255 + 80,
# 16/168 168 + 312, 16/128 128 + 984.
BACKWARD_SWEEP = [(32, None), (16, None), (32, 168), (16, 168), (16, 128)]


def backward_sweep(length: int) -> list[tuple[str, str, float]]:
    """Forward and forward + backward at b=1 (a training step's shape) for each backward launch
    setting; time segments automatic."""
    x, fwd = inputs(1, length, grad=True), inputs(1, length)
    rows = []
    for block_d, maxnreg in BACKWARD_SWEEP:
        scan_triton.BWD_MAXNREG = maxnreg
        fn = lambda block_d=block_d, **kw: scan_triton.selective_scan_triton(**kw, block_d=block_d)  # noqa: E731
        f, fb = bench(fn, fwd, False), bench(fn, x, True)
        name = f"triton BD={block_d} maxnreg={maxnreg or 'default'}"
        rows += [(f"b=1 L={length} fwd", name, f), (f"b=1 L={length} bwd (fwd+bwd - fwd)", name, fb - f)]
        print(f"| {name} | fwd {f:.3f} ms | bwd {fb - f:.3f} ms |", flush=True)
    scan_triton.BWD_MAXNREG = None
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    parser.add_argument("--backward-sweep", type=int, metavar="LENGTH", nargs="?", const=4224,
                        help="only time the backward's launch settings at this length (default 4224)")
    args = parser.parse_args()
    if args.backward_sweep:
        rows = backward_sweep(args.backward_sweep)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump([dict(shape=a, impl=b_, ms=c) for a, b_, c in rows], fh, indent=2)
        return
    rows = []
    for b, L, backward in [(1, 8192, False), (8, 8192, False), (1, 4096, True), (4, 4096, True)]:
        x = inputs(b, L, grad=backward)
        label = f"b={b} L={L} {'fwd+bwd' if backward else 'fwd'}"
        rows.append((label, "chunked (PyTorch)", bench(selective_scan_chunked, x, backward)))
        for block_d, warps, segments, fwd_ahead, bwd_ahead in LAUNCHES:
            def fn(block_d=block_d, warps=warps, segments=segments, **kw):
                return scan_triton.selective_scan_triton(**kw, block_d=block_d, num_warps=warps, segments=segments)

            scan_triton.FWD_PREFETCH, scan_triton.BWD_PREFETCH = fwd_ahead, bwd_ahead
            try:
                ms = bench(fn, x, backward)
            except Exception as exc:  # noqa: BLE001 - a launch that fails to compile is reported
                ms = float("nan")
                print(label, block_d, warps, segments, type(exc).__name__, str(exc)[:200])
            name = f"triton BD={block_d} warps={warps} segments={segments or 'auto'} prefetch={fwd_ahead}/{bwd_ahead}"
            rows.append((label, name, ms))
        print("\n".join(f"| {a} | {b_} | {c:.3f} ms |" for a, b_, c in rows[-len(LAUNCHES) - 1 :]), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([dict(shape=a, impl=b_, ms=c) for a, b_, c in rows], fh, indent=2)


if __name__ == "__main__":
    main()
