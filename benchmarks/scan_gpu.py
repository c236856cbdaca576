"""GPU selective scan: the Triton kernels (several forward launches) against the chunked PyTorch scan.

    python benchmarks/scan_gpu.py [--json out.json] [--launch-sweep [LENGTH]]

Shapes are Hymba-1.5B's SSM branch (channels 3200, state 16), bf16 activations as in the model.
The floor: the forward reads u, Δ, z and writes y (4 bytes·b·L·d in bf16, B/C are small) and
evaluates exp(Δ A) once per (t, channel, state); the backward does that twice and reads/writes
about three times the bytes.
"""

from __future__ import annotations

import argparse
import json

import torch
from graph_timing import graph_time, stream_time

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


# Launch settings timed by --launch-sweep. Forward: (steps prefetched, target programs); more
# programs hide more latency when the registers leave room for them (pass 2 uses 243 registers
# at 4 steps ahead, 128 at 2). Backward: (channels per program, warps, target programs; None:
# whole waves of programs, scan_triton.backward_segments).
FWD_SWEEP = [(4, 1024), (2, 1024), (2, 2048), (1, 2048), (2, 4096), (1, 4096)]
SAVE_SWEEP = [2, 1]  # steps prefetched by the forward that saves states (167 / 129 registers)
BWD_SWEEP = [(16, 1, None), (16, 1, 3168), (16, 1, 2048), (8, 1, 2048), (16, 2, 2048), (16, 1, 4096), (32, 2, 2048)]
BWD_SETTINGS = ("BWD_BLOCK_D", "BWD_WARPS", "BWD_TARGET_PROGRAMS")


def launch_sweep(length: int) -> list[tuple[str, str, float]]:
    """GPU time of the b=1 forward at ``length`` and 8K for each forward setting (CUDA-graph
    replays), of the forward that saves states for a backward at ``length`` for each of its
    prefetch settings, and of the backward (forward + backward minus forward) at ``length`` for each
    backward setting (back-to-back calls: a 2 ms call hides its launch, and graph capture failed
    once after a setting compiled new kernels; docs/performance.md, "Measuring")."""
    fwd_defaults = scan_triton.FWD_PREFETCH, scan_triton.TARGET_PROGRAMS
    bwd_defaults = [getattr(scan_triton, name) for name in BWD_SETTINGS]
    rows = []

    def record(shape: str, name: str, ms: float) -> None:
        rows.append((shape, name, ms))
        print(f"| {shape} | {name} | {ms:.3f} ms |", flush=True)

    def timed(args: dict, backward: bool) -> float:
        dy = torch.randn_like(args["u"])

        def call(i: int = 0) -> None:
            y, _ = scan_triton.selective_scan_triton(**args)
            if backward:
                y.backward(dy)
        return (stream_time(call, 10) if backward else graph_time(call, 3)) * 1e3

    for L in sorted({length, 8192}):
        x = inputs(1, L)
        for prefetch, target in FWD_SWEEP:
            scan_triton.FWD_PREFETCH, scan_triton.TARGET_PROGRAMS = prefetch, target
            record(f"b=1 L={L} fwd", f"triton fwd prefetch={prefetch} programs={target}", timed(x, False))
    scan_triton.FWD_PREFETCH, scan_triton.TARGET_PROGRAMS = fwd_defaults
    x = inputs(1, length, grad=True)
    save_default = scan_triton.FWD_SAVE_PREFETCH
    for prefetch in SAVE_SWEEP:  # the forward that saves states for a backward (training)
        scan_triton.FWD_SAVE_PREFETCH = prefetch
        record(f"b=1 L={length} fwd saving", f"triton fwd saving prefetch={prefetch}",
               stream_time(lambda: scan_triton.selective_scan_triton(**x), 10) * 1e3)
    scan_triton.FWD_SAVE_PREFETCH = save_default
    with torch.no_grad():
        fwd = stream_time(lambda: scan_triton.selective_scan_triton(**x), 10) * 1e3
    for setting in BWD_SWEEP:
        for name, value in zip(BWD_SETTINGS, setting):
            setattr(scan_triton, name, value)
        block_d, warps, target = setting
        record(f"b=1 L={length} bwd (fwd+bwd - fwd)", f"triton bwd BD={block_d} warps={warps} programs={target}",
               timed(x, True) - fwd)
    for name, value in zip(BWD_SETTINGS, bwd_defaults):
        setattr(scan_triton, name, value)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    parser.add_argument("--launch-sweep", type=int, metavar="LENGTH", nargs="?", const=4224,
                        help="only time the forward's and backward's launch settings at b=1 (default 4224)")
    args = parser.parse_args()
    if args.launch_sweep:
        rows = launch_sweep(args.launch_sweep)
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
